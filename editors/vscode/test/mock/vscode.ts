// A small in-memory stand-in for the `vscode` API, enough for the extension's code paths.
// VS Code itself cannot be downloaded in this environment (only package registries are
// reachable, and @vscode/test-electron fetches VS Code builds from elsewhere), so the
// vscode-dependent modules are tested against this mock instead.
import * as fs from "fs";
import * as path from "path";

type Listener<T> = (e: T) => unknown;

export class EventEmitter<T> {
  private listeners: Listener<T>[] = [];
  event = (l: Listener<T>) => {
    this.listeners.push(l);
    return new Disposable(() => {
      this.listeners = this.listeners.filter((x) => x !== l);
    });
  };
  fire(e: T): void {
    for (const l of [...this.listeners]) l(e);
  }
  get count(): number {
    return this.listeners.length;
  }
}

export class Disposable {
  constructor(private readonly fn: () => void = () => undefined) {}
  dispose(): void {
    this.fn();
  }
}

export class Position {
  constructor(public readonly line: number, public readonly character: number) {}
}

export class Range {
  readonly start: Position;
  readonly end: Position;
  constructor(a: number | Position, b: number | Position, c?: number, d?: number) {
    if (typeof a === "number") {
      this.start = new Position(a, b as number);
      this.end = new Position(c as number, d as number);
    } else {
      this.start = a;
      this.end = b as Position;
    }
  }
}

export class SnippetString {
  constructor(public value: string = "") {}
}

export class InlineCompletionItem {
  filterText?: string;
  constructor(
    public insertText: string | SnippetString,
    public range?: Range,
    public command?: unknown,
  ) {}
}

export enum InlineCompletionTriggerKind {
  Invoke = 0,
  Automatic = 1,
}
export enum StatusBarAlignment {
  Left = 1,
  Right = 2,
}
export enum ConfigurationTarget {
  Global = 1,
  Workspace = 2,
  WorkspaceFolder = 3,
}

export class CancellationTokenSource {
  private emitter = new EventEmitter<void>();
  token = {
    isCancellationRequested: false,
    onCancellationRequested: this.emitter.event,
  };
  cancel(): void {
    if (this.token.isCancellationRequested) return;
    this.token.isCancellationRequested = true;
    this.emitter.fire();
  }
  dispose(): void {}
}

// ---------------------------------------------------------------------------
// Configuration: defaults come from the extension's own package.json, so the tests
// also check that the manifest declares every key the code reads.

const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "..", "package.json"), "utf8"));
const declared: Record<string, { default?: unknown }> = manifest.contributes.configuration.properties;

export const settings = new Map<string, unknown>();
export const configChanged = new EventEmitter<{ affectsConfiguration(s: string): boolean }>();
export const readKeys = new Set<string>();

export function resetSettings(): void {
  settings.clear();
}

function lookup(full: string): unknown {
  readKeys.add(full);
  if (!(full in declared)) throw new Error(`setting ${full} is read but not declared in package.json`);
  if (settings.has(full)) return settings.get(full);
  const d = declared[full].default;
  return d === undefined ? undefined : JSON.parse(JSON.stringify(d));
}

/** Sets a value the way a user would and fires onDidChangeConfiguration. */
export async function setSetting(full: string, value: unknown): Promise<void> {
  settings.set(full, value);
  configChanged.fire({ affectsConfiguration: (s: string) => full === s || full.startsWith(s + ".") });
}

export const updates: Array<{ key: string; value: unknown; target: unknown }> = [];

export const workspace = {
  getConfiguration(section: string, _scope?: unknown) {
    return {
      get<T>(key: string, dflt?: T): T | undefined {
        const v = lookup(`${section}.${key}`) as T | undefined;
        return v === undefined ? dflt : v;
      },
      async update(key: string, value: unknown, target: unknown): Promise<void> {
        updates.push({ key: `${section}.${key}`, value, target });
        await setSetting(`${section}.${key}`, value);
      },
    };
  },
  onDidChangeConfiguration: configChanged.event,
};

// ---------------------------------------------------------------------------
// Window

export class MockOutputChannel {
  lines: string[] = [];
  shown = 0;
  constructor(public name: string) {}
  appendLine(s: string): void {
    this.lines.push(s);
  }
  append(s: string): void {
    this.lines.push(s);
  }
  show(): void {
    this.shown++;
  }
  clear(): void {
    this.lines = [];
  }
  hide(): void {}
  replace(s: string): void {
    this.lines = [s];
  }
  dispose(): void {}
}

export class MockStatusBarItem {
  text = "";
  tooltip: unknown = "";
  command: unknown;
  name: string | undefined;
  visible = false;
  disposed = false;
  constructor(public alignment: StatusBarAlignment, public priority: number) {}
  show(): void {
    this.visible = true;
  }
  hide(): void {
    this.visible = false;
  }
  dispose(): void {
    this.disposed = true;
  }
}

export const activeEditorChanged = new EventEmitter<unknown>();
export const messages: Array<{ level: string; text: string; items: string[] }> = [];
export let nextErrorChoice: string | undefined;
export function setNextErrorChoice(c: string | undefined): void {
  nextErrorChoice = c;
}

export const window = {
  activeTextEditor: undefined as undefined | { document: { languageId: string } },
  state: { focused: true },
  outputChannels: [] as MockOutputChannel[],
  statusBarItems: [] as MockStatusBarItem[],
  createOutputChannel(name: string) {
    const c = new MockOutputChannel(name);
    this.outputChannels.push(c);
    return c;
  },
  createStatusBarItem(alignment: StatusBarAlignment, priority: number) {
    const s = new MockStatusBarItem(alignment, priority);
    this.statusBarItems.push(s);
    return s;
  },
  async showErrorMessage(text: string, ...items: string[]) {
    messages.push({ level: "error", text, items });
    return nextErrorChoice;
  },
  async showInformationMessage(text: string, ...items: string[]) {
    messages.push({ level: "info", text, items });
    return undefined;
  },
  onDidChangeActiveTextEditor: activeEditorChanged.event,
};

// ---------------------------------------------------------------------------
// Commands and languages

export const registeredCommands = new Map<string, (...args: unknown[]) => unknown>();
export const executedCommands: Array<{ id: string; args: unknown[] }> = [];
export const commands = {
  registerCommand(id: string, fn: (...args: unknown[]) => unknown) {
    if (registeredCommands.has(id)) throw new Error(`command ${id} already registered`);
    registeredCommands.set(id, fn);
    return new Disposable(() => registeredCommands.delete(id));
  },
  async executeCommand(id: string, ...args: unknown[]) {
    executedCommands.push({ id, args });
    const fn = registeredCommands.get(id);
    return fn ? fn(...args) : undefined;
  },
};

export const inlineProviders: Array<{ selector: unknown; provider: any }> = [];
export const languages = {
  registerInlineCompletionItemProvider(selector: unknown, provider: unknown) {
    const entry = { selector, provider };
    inlineProviders.push(entry);
    return new Disposable(() => inlineProviders.splice(inlineProviders.indexOf(entry), 1));
  },
};

export class Uri {
  constructor(private readonly s: string) {}
  static parse(s: string): Uri {
    return new Uri(s);
  }
  toString(): string {
    return this.s;
  }
}
