// Pure logic of the gemma-lsp VS Code extension.
//
// This module must not import `vscode` (nor anything that does): it is unit-tested
// with plain node (`npm test`), since VS Code itself cannot run in CI.

/** The settings object the server understands (section `gemmaLsp`). */
export interface ServerSettings {
  model: string | null;
  draftModel: string | null;
  drafter: Drafter;
  maxTokens: number;
  singleLine: SingleLine;
  temperature: number;
  timeBudgetMs?: number;
  retrieval?: Retrieval;
  /** "inprocess" | "local" (one shared engine per user and model) | an OpenAI-compatible base URL. */
  backend?: string;
  backendModel?: string;
  /** Name of the environment variable holding the server's API key (never the key itself). */
  apiKeyEnv?: string;
}

// These lists mirror the server's settings schema (gemma_lsp/config.py); tests/test_settings_schema.py
// fails when they drift apart.
export const DRAFTERS = ["auto", "none", "ngram", "suggestion", "retrieval", "model", "gemma4-assistant"] as const;
export type Drafter = (typeof DRAFTERS)[number];
export const SINGLE_LINE = ["auto", "always", "never"] as const;
export type SingleLine = (typeof SINGLE_LINE)[number];
export const RETRIEVAL = ["stdlib", "none"] as const;
export type Retrieval = (typeof RETRIEVAL)[number];

export const DEFAULT_SERVER_SETTINGS: Readonly<ServerSettings> = Object.freeze({
  model: null,
  draftModel: null,
  drafter: "auto",
  maxTokens: 64,
  singleLine: "auto",
  temperature: 0,
});

/** Keys of the VS Code `gemmaLsp` section that are forwarded to the server. */
export const SERVER_KEYS = [
  "model",
  "draftModel",
  "drafter",
  "maxTokens",
  "singleLine",
  "timeBudgetMs",
  "temperature",
  "retrieval",
  "backend",
  "backendModel",
  "apiKeyEnv",
] as const;

/** Keys whose change needs a server restart (the process itself changes). */
export const RESTART_KEYS = ["serverPath", "serverArgs", "serverEnv"] as const;

function optionalString(v: unknown): string | null {
  if (typeof v !== "string") return null;
  const s = v.trim();
  return s === "" ? null : s;
}

function oneOf<T extends string>(v: unknown, allowed: readonly T[], fallback: T): T {
  return typeof v === "string" && (allowed as readonly string[]).includes(v) ? (v as T) : fallback;
}

function positiveInt(v: unknown): number | undefined {
  if (typeof v !== "number" || !Number.isFinite(v)) return undefined;
  const n = Math.floor(v);
  return n >= 1 ? n : undefined;
}

/**
 * Maps the raw VS Code configuration section (`gemmaLsp.*`, as a plain object) to the
 * server settings object. Extension-only keys (serverPath, enabled, languages, ...)
 * are dropped; invalid values fall back to the server defaults; an empty model path
 * means "the embedded default model" (null).
 */
export function toServerSettings(raw: Record<string, unknown> | undefined | null): ServerSettings {
  const r = raw ?? {};
  const out: ServerSettings = {
    model: optionalString(r.model),
    draftModel: optionalString(r.draftModel),
    drafter: oneOf(r.drafter, DRAFTERS, DEFAULT_SERVER_SETTINGS.drafter),
    maxTokens: positiveInt(r.maxTokens) ?? DEFAULT_SERVER_SETTINGS.maxTokens,
    singleLine: oneOf(r.singleLine, SINGLE_LINE, DEFAULT_SERVER_SETTINGS.singleLine),
    temperature:
      typeof r.temperature === "number" && Number.isFinite(r.temperature) && r.temperature >= 0
        ? r.temperature
        : DEFAULT_SERVER_SETTINGS.temperature,
  };
  const budget = positiveInt(r.timeBudgetMs);
  if (budget !== undefined) out.timeBudgetMs = budget;
  if (typeof r.retrieval === "string" && (RETRIEVAL as readonly string[]).includes(r.retrieval)) {
    out.retrieval = r.retrieval as Retrieval;
  }
  const backend = optionalString(r.backend);
  if (backend !== null && (backend === "inprocess" || backend === "local" || /^https?:\/\//.test(backend))) {
    out.backend = backend;
  }
  const backendModel = optionalString(r.backendModel);
  if (backendModel !== null) out.backendModel = backendModel;
  const keyEnv = optionalString(r.apiKeyEnv);
  if (keyEnv !== null && /^[A-Za-z_][A-Za-z0-9_]*$/.test(keyEnv)) out.apiKeyEnv = keyEnv;
  return out;
}

/** `initializationOptions` sent in `initialize`. */
export function initializationOptions(raw: Record<string, unknown> | undefined | null): {
  gemmaLsp: ServerSettings;
} {
  return { gemmaLsp: toServerSettings(raw) };
}

/** Params of the `workspace/didChangeConfiguration` notification. */
export function didChangeConfigurationParams(raw: Record<string, unknown> | undefined | null): {
  settings: { gemmaLsp: ServerSettings };
} {
  return { settings: { gemmaLsp: toServerSettings(raw) } };
}

/**
 * Answers a `workspace/configuration` request: the `gemmaLsp` section (or a key in it)
 * is answered with the server settings; other sections with `fallback(section)`.
 */
export function answerConfiguration(
  items: ReadonlyArray<{ section?: string }>,
  raw: Record<string, unknown> | undefined | null,
  fallback: (section: string | undefined) => unknown = () => null,
): unknown[] {
  const settings = toServerSettings(raw) as unknown as Record<string, unknown>;
  return items.map((item) => {
    const section = item.section;
    if (section === "gemmaLsp") return settings;
    if (section !== undefined && section.startsWith("gemmaLsp.")) {
      const key = section.slice("gemmaLsp.".length);
      return key in settings ? settings[key] : null;
    }
    return fallback(section);
  });
}

/** Server executable and arguments from the raw section. */
export function serverCommand(
  raw: Record<string, unknown> | undefined | null,
  env: Record<string, string | undefined> = {},
): { command: string; args: string[] } {
  const r = raw ?? {};
  let command = optionalString(r.serverPath) ?? "gemma-lsp";
  const home = env.HOME ?? env.USERPROFILE;
  if (home && (command === "~" || command.startsWith("~/"))) command = home + command.slice(1);
  const args =
    Array.isArray(r.serverArgs) && r.serverArgs.every((a) => typeof a === "string")
      ? (r.serverArgs as string[])
      : ["serve"];
  return { command, args };
}

/** True when a configuration change touches any of `keys` (under `gemmaLsp.`). */
export function affectsAny(affects: (section: string) => boolean, keys: readonly string[]): boolean {
  return keys.some((k) => affects(`gemmaLsp.${k}`));
}

// ---------------------------------------------------------------------------
// Per-language enable (Copilot style: {"*": true, "markdown": false, ...})

export const DEFAULT_LANGUAGES: Readonly<Record<string, boolean>> = Object.freeze({
  "*": true,
  plaintext: false,
  markdown: false,
  scminput: false,
});

/**
 * Whether completions are wanted for `languageId`. `enabled` is the global switch (the
 * toggle command); `languages` maps language ids to booleans, `"*"` being the default
 * for languages not listed (true when absent).
 */
export function isEnabledFor(
  languageId: string,
  enabled: unknown,
  languages: unknown,
): boolean {
  if (enabled === false) return false;
  const map =
    languages !== null && typeof languages === "object" && !Array.isArray(languages)
      ? (languages as Record<string, unknown>)
      : DEFAULT_LANGUAGES;
  const own = map[languageId];
  if (typeof own === "boolean") return own;
  const star = map["*"];
  return typeof star === "boolean" ? star : true;
}

// ---------------------------------------------------------------------------
// Stats (`gemma/stats`)

export interface Stats {
  completions: number;
  prompt_tokens: number;
  reused_tokens: number;
  tokens: number;
  drafted: number;
  accepted: number;
  target_forwards: number;
  cancelled: number;
  latency_ms: { p50: number | null; p95: number | null; last?: number | null };
}

function num(v: unknown): number {
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

function numOrNull(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** Normalizes a `gemma/stats` result; missing or malformed fields become 0 / null. */
export function parseStats(result: unknown): Stats | null {
  if (result === null || typeof result !== "object") return null;
  const r = result as Record<string, unknown>;
  const lat = (r.latency_ms !== null && typeof r.latency_ms === "object" ? r.latency_ms : {}) as Record<
    string,
    unknown
  >;
  return {
    completions: num(r.completions),
    prompt_tokens: num(r.prompt_tokens),
    reused_tokens: num(r.reused_tokens),
    tokens: num(r.tokens),
    drafted: num(r.drafted),
    accepted: num(r.accepted),
    target_forwards: num(r.target_forwards),
    cancelled: num(r.cancelled),
    latency_ms: { p50: numOrNull(lat.p50), p95: numOrNull(lat.p95), last: numOrNull(lat.last) },
  };
}

/** "72%", or "–" when the denominator is 0. */
export function percent(part: number, whole: number): string {
  if (!(whole > 0)) return "–";
  return `${Math.round((100 * part) / whole)}%`;
}

export function ms(v: number | null | undefined): string {
  return typeof v === "number" && Number.isFinite(v) ? `${Math.round(v)} ms` : "–";
}

/** Short status-bar text, e.g. "acc 72% · reuse 95% · 120 ms". */
export function formatStatsShort(s: Stats): string {
  return `acc ${percent(s.accepted, s.drafted)} · reuse ${percent(s.reused_tokens, s.prompt_tokens)} · ${ms(
    s.latency_ms.last,
  )}`;
}

/** Multi-line report for the output channel / tooltip. */
export function formatStatsLong(s: Stats): string {
  const tokensPerForward = s.target_forwards > 0 ? (s.tokens / s.target_forwards).toFixed(2) : "–";
  return [
    `completions:        ${s.completions} (cancelled ${s.cancelled})`,
    `draft acceptance:   ${percent(s.accepted, s.drafted)} (${s.accepted}/${s.drafted} drafted tokens)`,
    `prompt reuse:       ${percent(s.reused_tokens, s.prompt_tokens)} (${s.reused_tokens}/${s.prompt_tokens} prompt tokens)`,
    `generated tokens:   ${s.tokens} in ${s.target_forwards} target forwards (${tokensPerForward} tokens/forward)`,
    `latency:            p50 ${ms(s.latency_ms.p50)}, p95 ${ms(s.latency_ms.p95)}, last ${ms(s.latency_ms.last)}`,
  ].join("\n");
}

// ---------------------------------------------------------------------------
// textDocument/inlineCompletion result → editor-neutral items

export interface LspPosition {
  line: number;
  character: number;
}
export interface LspRange {
  start: LspPosition;
  end: LspPosition;
}
export interface LspCommand {
  title: string;
  command: string;
  arguments?: unknown[];
}

/** An inline item ready to become a `vscode.InlineCompletionItem`. */
export interface InlineItem {
  /** Plain text, or a snippet when `snippet` is true. */
  text: string;
  snippet: boolean;
  range?: LspRange;
  filterText?: string;
  command?: LspCommand;
}

function isPosition(v: unknown): v is LspPosition {
  if (v === null || typeof v !== "object") return false;
  const p = v as Record<string, unknown>;
  return Number.isInteger(p.line) && Number.isInteger(p.character) && (p.line as number) >= 0 && (p.character as number) >= 0;
}

function isRange(v: unknown): v is LspRange {
  if (v === null || typeof v !== "object") return false;
  const r = v as Record<string, unknown>;
  return isPosition(r.start) && isPosition(r.end);
}

function isCommand(v: unknown): v is LspCommand {
  if (v === null || typeof v !== "object") return false;
  const c = v as Record<string, unknown>;
  return typeof c.title === "string" && typeof c.command === "string";
}

/**
 * Converts an `InlineCompletionList | InlineCompletionItem[] | null` result. Items with an
 * empty or malformed `insertText` are dropped; `StringValue` (`{kind: "snippet", value}`)
 * becomes a snippet.
 */
export function toInlineItems(result: unknown): InlineItem[] {
  let raw: unknown[];
  if (Array.isArray(result)) raw = result;
  else if (result !== null && typeof result === "object" && Array.isArray((result as { items?: unknown }).items))
    raw = (result as { items: unknown[] }).items;
  else return [];
  const out: InlineItem[] = [];
  for (const it of raw) {
    if (it === null || typeof it !== "object") continue;
    const o = it as Record<string, unknown>;
    let text: string;
    let snippet = false;
    if (typeof o.insertText === "string") text = o.insertText;
    else if (
      o.insertText !== null &&
      typeof o.insertText === "object" &&
      (o.insertText as Record<string, unknown>).kind === "snippet" &&
      typeof (o.insertText as Record<string, unknown>).value === "string"
    ) {
      text = (o.insertText as { value: string }).value;
      snippet = true;
    } else continue;
    if (text === "") continue;
    const item: InlineItem = { text, snippet };
    if (isRange(o.range)) item.range = o.range;
    if (typeof o.filterText === "string") item.filterText = o.filterText;
    if (isCommand(o.command)) item.command = o.command;
    out.push(item);
  }
  return out;
}

/** VS Code's InlineCompletionTriggerKind (Invoke = 0, Automatic = 1) → LSP's (Invoked = 1, Automatic = 2). */
export function toLspTriggerKind(vscodeKind: number): 1 | 2 {
  return vscodeKind === 0 ? 1 : 2;
}

/** Params of `textDocument/inlineCompletion`. */
export function inlineCompletionParams(
  uri: string,
  position: LspPosition,
  vscodeTriggerKind: number,
  selected?: { range: LspRange; text: string },
): {
  textDocument: { uri: string };
  position: LspPosition;
  context: { triggerKind: 1 | 2; selectedCompletionInfo?: { range: LspRange; text: string } };
} {
  const context: { triggerKind: 1 | 2; selectedCompletionInfo?: { range: LspRange; text: string } } = {
    triggerKind: toLspTriggerKind(vscodeTriggerKind),
  };
  if (selected) context.selectedCompletionInfo = selected;
  return { textDocument: { uri }, position, context };
}
