// Entry point of the gemma-lsp VS Code extension: starts `gemma-lsp serve`, keeps the
// server's settings in sync, shows ghost text and a status-bar item with live stats.
import * as vscode from "vscode";
import {
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  State,
} from "vscode-languageclient/node";
import { GemmaInlineProvider } from "./inline";
import {
  affectsAny,
  answerConfiguration,
  didChangeConfigurationParams,
  formatStatsLong,
  formatStatsShort,
  initializationOptions,
  isEnabledFor,
  parseStats,
  RESTART_KEYS,
  serverCommand,
  SERVER_KEYS,
  Stats,
} from "./logic";

export const STATS_METHOD = "gemma/stats";
const SECTION = "gemmaLsp";
const ALL_KEYS = [...SERVER_KEYS, ...RESTART_KEYS, "enabled", "languages", "popupCompletion"];
const SELECTOR: vscode.DocumentSelector = [{ scheme: "file" }, { scheme: "untitled" }];

function rawSection(): Record<string, unknown> {
  const cfg = vscode.workspace.getConfiguration(SECTION);
  const out: Record<string, unknown> = {};
  for (const k of ALL_KEYS) out[k] = cfg.get(k);
  return out;
}

export class GemmaExtension implements vscode.Disposable {
  client: LanguageClient | undefined;
  readonly output: vscode.OutputChannel;
  readonly status: vscode.StatusBarItem;
  lastStats: Stats | null = null;
  /** Resolves when the current client has started (true) or failed to (false). */
  private started: Promise<boolean> = Promise.resolve(false);
  private timer: ReturnType<typeof setInterval> | undefined;
  private refreshPending: ReturnType<typeof setTimeout> | undefined;
  private readonly disposables: vscode.Disposable[] = [];

  constructor() {
    this.output = vscode.window.createOutputChannel("gemma-lsp");
    this.status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
    this.status.command = "gemmaLsp.showStats";
    this.status.name = "gemma-lsp";
    this.disposables.push(this.output, this.status);
  }

  activate(context: vscode.ExtensionContext): void {
    const provider = new GemmaInlineProvider({
      getClient: () =>
        this.client
          ? {
              isRunning: () => this.client?.state === State.Running,
              whenReady: (token) => whenReady(this.started, token),
              sendRequest: (method, params, token) =>
                this.client!.sendRequest(method, params, token) as Promise<unknown>,
            }
          : undefined,
      onAnswered: () => this.scheduleRefresh(),
      log: (m) => this.output.appendLine(m),
    });
    this.disposables.push(
      vscode.languages.registerInlineCompletionItemProvider(SELECTOR, provider),
      vscode.commands.registerCommand("gemmaLsp.restart", () => this.restart()),
      vscode.commands.registerCommand("gemmaLsp.toggle", () => this.toggle()),
      vscode.commands.registerCommand("gemmaLsp.showStats", () => this.showStats()),
      vscode.workspace.onDidChangeConfiguration((e) => this.onConfigChange(e)),
      vscode.window.onDidChangeActiveTextEditor(() => this.render()),
    );
    context.subscriptions.push(this);
    this.render();
    this.status.show();
    this.startPolling();
    void this.start();
  }

  createClient(): LanguageClient {
    const raw = rawSection();
    const { command, args } = serverCommand(raw, process.env);
    const serverEnv = vscode.workspace.getConfiguration(SECTION).get<Record<string, string>>("serverEnv") ?? {};
    const serverOptions: ServerOptions = { command, args, options: { env: { ...process.env, ...serverEnv } } };
    const clientOptions: LanguageClientOptions = {
      documentSelector: SELECTOR as LanguageClientOptions["documentSelector"],
      outputChannel: this.output,
      initializationOptions: initializationOptions(raw),
      middleware: {
        // The server also answers textDocument/completion (one item, for editors without
        // ghost text). In VS Code that would run the model twice per keystroke, so the
        // popup is off unless gemmaLsp.popupCompletion is set.
        provideCompletionItem: (document, position, context, token, next) => {
          const cfg = vscode.workspace.getConfiguration(SECTION, document);
          if (!cfg.get<boolean>("popupCompletion")) return undefined;
          if (!isEnabledFor(document.languageId, cfg.get("enabled"), cfg.get("languages"))) return undefined;
          return next(document, position, context, token);
        },
        workspace: {
          configuration: async (params, token, next) => {
            const answered = await next(params, token);
            if (!Array.isArray(answered)) return answered;
            const ours = answerConfiguration(params.items, rawSection(), () => undefined);
            return answered.map((v, i) => (ours[i] === undefined ? v : ours[i]));
          },
        },
      },
    };
    return new LanguageClient("gemmaLsp", "gemma-lsp", serverOptions, clientOptions);
  }

  async start(): Promise<void> {
    const client = this.createClient();
    this.client = client;
    client.onDidChangeState(() => this.render());
    this.render();
    const starting = client.start();
    this.started = starting.then(
      () => true,
      () => false,
    );
    try {
      await starting;
      this.output.appendLine(`gemma-lsp started: ${serverCommand(rawSection(), process.env).command}`);
      this.scheduleRefresh();
      this.askAgain();
    } catch (err) {
      this.output.appendLine(`gemma-lsp failed to start: ${String(err)}`);
      this.render();
      const choice = await vscode.window.showErrorMessage(
        `gemma-lsp could not start (${String(err)}). Check "gemmaLsp.serverPath" in your User settings ` +
          `(in a remote window: the remote machine's path) and run \`gemma-lsp doctor\` in a terminal.`,
        "Open Settings",
        "Show Log",
      );
      if (choice === "Open Settings") await vscode.commands.executeCommand("workbench.action.openSettings", SECTION);
      else if (choice === "Show Log") this.output.show(true);
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop(2000);
      } catch (err) {
        this.output.appendLine(`gemma-lsp stop: ${String(err)}`);
      }
    }
  }

  async restart(): Promise<void> {
    this.output.appendLine("restarting gemma-lsp");
    await this.stop();
    this.lastStats = null;
    await this.start();
  }

  async toggle(): Promise<void> {
    const cfg = vscode.workspace.getConfiguration(SECTION);
    const next = cfg.get<boolean>("enabled") === false;
    await cfg.update("enabled", next, vscode.ConfigurationTarget.Global);
    void vscode.window.showInformationMessage(`gemma-lsp completions ${next ? "enabled" : "disabled"}.`);
    this.render();
    if (next) this.askAgain();
  }

  /**
   * Ask for ghost text at the cursor once more. VS Code asks an inline provider after an
   * edit and not again: text typed before this extension was active (it activates after
   * start-up) or while completions were off would otherwise get no suggestion until the
   * next keystroke. The command acts on the focused editor only.
   */
  private askAgain(): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor) return;
    const cfg = vscode.workspace.getConfiguration(SECTION, editor.document);
    if (!isEnabledFor(editor.document.languageId, cfg.get("enabled"), cfg.get("languages"))) return;
    void vscode.commands.executeCommand("editor.action.inlineSuggest.trigger");
  }

  async fetchStats(): Promise<Stats | null> {
    const client = this.client;
    if (!client || client.state !== State.Running) return null;
    try {
      this.lastStats = parseStats(await client.sendRequest(STATS_METHOD));
    } catch (err) {
      this.output.appendLine(`${STATS_METHOD} failed: ${String(err)}`);
    }
    this.render();
    return this.lastStats;
  }

  async showStats(): Promise<void> {
    const stats = await this.fetchStats();
    this.output.appendLine(`--- gemma/stats ${new Date().toISOString()}`);
    this.output.appendLine(stats ? formatStatsLong(stats) : "no stats: the server is not running (see the log above)");
    this.output.show(true);
  }

  render(): void {
    const cfg = vscode.workspace.getConfiguration(SECTION);
    const doc = vscode.window.activeTextEditor?.document;
    const running = this.client?.state === State.Running;
    const enabled = cfg.get<boolean>("enabled") !== false;
    const langOn = doc ? isEnabledFor(doc.languageId, enabled, cfg.get("languages")) : enabled;
    if (!running) {
      this.status.text = "$(warning) gemma";
      this.status.tooltip = "gemma-lsp is not running. Click for details; run `gemma-lsp doctor` in a terminal.";
    } else if (!langOn) {
      this.status.text = "$(circle-slash) gemma";
      this.status.tooltip = enabled
        ? `gemma-lsp is off for ${doc?.languageId} (gemmaLsp.languages)`
        : "gemma-lsp completions are disabled (gemmaLsp: Toggle Completions)";
    } else {
      this.status.text = this.lastStats ? `$(sparkle) ${formatStatsShort(this.lastStats)}` : "$(sparkle) gemma";
      this.status.tooltip = this.lastStats ? formatStatsLong(this.lastStats) : "gemma-lsp: no completion yet";
    }
  }

  private startPolling(): void {
    const every = vscode.workspace.getConfiguration(SECTION).get<number>("statsIntervalMs") ?? 5000;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (every > 0)
      this.timer = setInterval(() => {
        if (vscode.window.state.focused) void this.fetchStats();
      }, Math.max(500, every));
  }

  private scheduleRefresh(): void {
    if (this.refreshPending) return;
    this.refreshPending = setTimeout(() => {
      this.refreshPending = undefined;
      void this.fetchStats();
    }, 300);
  }

  private onConfigChange(e: vscode.ConfigurationChangeEvent): void {
    if (!e.affectsConfiguration(SECTION)) return;
    const affects = (s: string) => e.affectsConfiguration(s);
    if (affectsAny(affects, RESTART_KEYS)) {
      void this.restart();
    } else if (affectsAny(affects, SERVER_KEYS) && this.client?.state === State.Running) {
      void this.client.sendNotification("workspace/didChangeConfiguration", didChangeConfigurationParams(rawSection()));
    }
    if (affectsAny(affects, ["statsIntervalMs"])) this.startPolling();
    this.render();
  }

  dispose(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.refreshPending) clearTimeout(this.refreshPending);
    for (const d of this.disposables.splice(0)) d.dispose();
  }
}

/** `started`, or false as soon as `token` is cancelled (the user typed on). */
function whenReady(started: Promise<boolean>, token: vscode.CancellationToken): Promise<boolean> {
  if (token.isCancellationRequested) return Promise.resolve(false);
  return new Promise((resolve) => {
    const sub = token.onCancellationRequested(() => {
      sub.dispose();
      resolve(false);
    });
    void started.then((ok) => {
      sub.dispose();
      resolve(ok && !token.isCancellationRequested);
    });
  });
}

let instance: GemmaExtension | undefined;

export function activate(context: vscode.ExtensionContext): GemmaExtension {
  instance = new GemmaExtension();
  instance.activate(context);
  return instance;
}

export async function deactivate(): Promise<void> {
  const ext = instance;
  instance = undefined;
  if (ext) {
    await ext.stop();
    ext.dispose();
  }
}
