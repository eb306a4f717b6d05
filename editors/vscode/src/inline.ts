// Ghost-text provider: sends `textDocument/inlineCompletion` through the language client
// and converts the answer. vscode-languageclient 9 only has inline completion as a
// "proposed" feature, so we register this thin provider instead; it also lets us honour
// the global toggle and the per-language switches before any request is sent.
import * as vscode from "vscode";
import { inlineCompletionParams, InlineItem, isEnabledFor, toInlineItems } from "./logic";

/** What the provider needs from the language client. */
export interface Requester {
  isRunning(): boolean;
  /** Resolves true once the server runs, false if it fails to start or `token` is cancelled. */
  whenReady(token: vscode.CancellationToken): Promise<boolean>;
  sendRequest(method: string, params: unknown, token?: vscode.CancellationToken): Promise<unknown>;
}

export interface ProviderOptions {
  getClient(): Requester | undefined;
  /** Called after each answered request (e.g. to refresh the status bar). */
  onAnswered?(): void;
  log?(message: string): void;
}

export const INLINE_METHOD = "textDocument/inlineCompletion";

function sleep(ms: number, token: vscode.CancellationToken): Promise<boolean> {
  return new Promise((resolve) => {
    if (ms <= 0) return resolve(!token.isCancellationRequested);
    const sub = token.onCancellationRequested(() => {
      clearTimeout(t);
      sub.dispose();
      resolve(false);
    });
    const t = setTimeout(() => {
      sub.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
  });
}

export function toVscodeItem(item: InlineItem): vscode.InlineCompletionItem {
  const text = item.snippet ? new vscode.SnippetString(item.text) : item.text;
  const range = item.range
    ? new vscode.Range(item.range.start.line, item.range.start.character, item.range.end.line, item.range.end.character)
    : undefined;
  const out = new vscode.InlineCompletionItem(text, range, item.command);
  if (item.filterText !== undefined) out.filterText = item.filterText;
  return out;
}

export class GemmaInlineProvider implements vscode.InlineCompletionItemProvider {
  constructor(private readonly opts: ProviderOptions) {}

  async provideInlineCompletionItems(
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
  ): Promise<vscode.InlineCompletionItem[]> {
    const cfg = vscode.workspace.getConfiguration("gemmaLsp", document);
    if (!isEnabledFor(document.languageId, cfg.get("enabled"), cfg.get("languages"))) return [];
    const client = this.opts.getClient();
    if (!client) return [];
    // While the server starts (the model loads) the request waits instead of answering
    // nothing: VS Code would not ask again until the next edit, and the first ghost text
    // after opening the editor would never come.
    if (!client.isRunning() && !(await client.whenReady(token))) return [];
    // Typing fast fires one call per keystroke; VS Code cancels the stale ones. A short
    // wait lets most of them die here instead of reaching the server.
    const debounce = cfg.get<number>("debounceMs") ?? 0;
    if (!(await sleep(debounce, token))) return [];
    const selected = context.selectedCompletionInfo
      ? {
          range: {
            start: {
              line: context.selectedCompletionInfo.range.start.line,
              character: context.selectedCompletionInfo.range.start.character,
            },
            end: {
              line: context.selectedCompletionInfo.range.end.line,
              character: context.selectedCompletionInfo.range.end.character,
            },
          },
          text: context.selectedCompletionInfo.text,
        }
      : undefined;
    const params = inlineCompletionParams(
      document.uri.toString(),
      { line: position.line, character: position.character },
      context.triggerKind,
      selected,
    );
    let result: unknown;
    try {
      result = await client.sendRequest(INLINE_METHOD, params, token);
    } catch (err) {
      // Cancellation surfaces as an error from the client; anything else is logged.
      if (!token.isCancellationRequested) this.opts.log?.(`inlineCompletion failed: ${String(err)}`);
      return [];
    }
    this.opts.onAnswered?.();
    if (token.isCancellationRequested) return [];
    return toInlineItems(result).map(toVscodeItem);
  }
}
