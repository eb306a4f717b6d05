// Tests of the vscode-dependent parts (activation, commands, ghost-text provider, status
// bar, settings sync) against the mocked VS Code API in test/mock/. VS Code itself cannot
// be downloaded here, so nothing in this file runs inside a real editor.
import { afterEach, beforeEach, test } from "node:test";
import * as assert from "node:assert/strict";
import * as vscode from "./mock/vscode";
import { LanguageClient } from "./mock/languageclient";
import { activate, deactivate, GemmaExtension, STATS_METHOD } from "../src/extension";
import { INLINE_METHOD } from "../src/inline";

const STATS = {
  completions: 4,
  prompt_tokens: 1000,
  reused_tokens: 900,
  tokens: 80,
  drafted: 40,
  accepted: 30,
  target_forwards: 50,
  cancelled: 1,
  latency_ms: { p50: 80, p95: 200, last: 150 },
};

let ext: GemmaExtension;
let context: { subscriptions: Array<{ dispose(): void }> };

const tick = () => new Promise((r) => setImmediate(r));

beforeEach(async () => {
  vscode.resetSettings();
  vscode.settings.set("gemmaLsp.debounceMs", 0);
  vscode.settings.set("gemmaLsp.statsIntervalMs", 0);
  vscode.messages.length = 0;
  vscode.updates.length = 0;
  vscode.executedCommands.length = 0;
  vscode.setNextErrorChoice(undefined);
  vscode.window.activeTextEditor = { document: { languageId: "python" } };
  LanguageClient.instances.length = 0;
  LanguageClient.handlers.clear();
  LanguageClient.failStart = undefined;
  LanguageClient.startGate = undefined;
  LanguageClient.handlers.set(STATS_METHOD, () => STATS);
  LanguageClient.handlers.set(INLINE_METHOD, () => ({
    items: [{ insertText: "return x + 1", range: { start: { line: 2, character: 4 }, end: { line: 2, character: 4 } } }],
  }));
  context = { subscriptions: [] };
  ext = activate(context as never);
  await tick();
});

afterEach(async () => {
  await deactivate();
  for (const d of context.subscriptions) d.dispose();
});

function client(): LanguageClient {
  return LanguageClient.instances[LanguageClient.instances.length - 1];
}

function provider() {
  assert.equal(vscode.inlineProviders.length, 1);
  return vscode.inlineProviders[0].provider;
}

function doc(languageId = "python") {
  return { languageId, uri: vscode.Uri.parse("file:///w/a.py") };
}

async function complete(languageId = "python", triggerKind = 1, token = new vscode.CancellationTokenSource().token) {
  return provider().provideInlineCompletionItems(doc(languageId), new vscode.Position(2, 4), { triggerKind }, token);
}

test("activate starts `gemma-lsp serve` with the settings as initializationOptions", () => {
  const c = client();
  assert.equal(LanguageClient.instances.length, 1);
  assert.equal(c.id, "gemmaLsp");
  assert.equal(c.serverOptions.command, "gemma-lsp");
  assert.deepEqual(c.serverOptions.args, ["serve"]);
  assert.deepEqual(c.clientOptions.initializationOptions, {
    gemmaLsp: { model: null, draftModel: null, drafter: "auto", maxTokens: 64, singleLine: "auto", temperature: 0, retrieval: "stdlib" },
  });
  assert.equal(c.state, 2, "running");
  for (const id of ["gemmaLsp.restart", "gemmaLsp.toggle", "gemmaLsp.showStats"])
    assert.ok(vscode.registeredCommands.has(id), id);
  assert.equal((ext.status as unknown as vscode.MockStatusBarItem).visible, true);
  assert.equal(ext.status.command, "gemmaLsp.showStats");
});

test("custom server path, args, env and model reach the client", async () => {
  await deactivate();
  vscode.settings.set("gemmaLsp.serverPath", "/opt/venv/bin/gemma-lsp");
  vscode.settings.set("gemmaLsp.serverArgs", ["serve", "--log-level", "debug"]);
  vscode.settings.set("gemmaLsp.serverEnv", { CUDA_VISIBLE_DEVICES: "1" });
  vscode.settings.set("gemmaLsp.model", "gemma4-31b");
  vscode.settings.set("gemmaLsp.drafter", "model");
  ext = activate(context as never);
  await tick();
  const c = client();
  assert.equal(c.serverOptions.command, "/opt/venv/bin/gemma-lsp");
  assert.deepEqual(c.serverOptions.args, ["serve", "--log-level", "debug"]);
  assert.equal(c.serverOptions.options.env.CUDA_VISIBLE_DEVICES, "1");
  assert.equal(c.clientOptions.initializationOptions.gemmaLsp.model, "gemma4-31b");
  assert.equal(c.clientOptions.initializationOptions.gemmaLsp.drafter, "model");
});

test("ghost text: request params and converted items", async () => {
  const items = await complete("python", 1);
  assert.equal(items.length, 1);
  assert.ok(items[0] instanceof vscode.InlineCompletionItem);
  assert.equal(items[0].insertText, "return x + 1");
  assert.ok(items[0].range instanceof vscode.Range);
  assert.deepEqual([items[0].range.start.line, items[0].range.start.character], [2, 4]);
  const req = client().requests.find((r) => r.method === INLINE_METHOD)!;
  assert.deepEqual(req.params, {
    textDocument: { uri: "file:///w/a.py" },
    position: { line: 2, character: 4 },
    context: { triggerKind: 2 },
  });
  assert.ok(req.token, "the cancellation token is passed to the client");
});

test("a request while the server starts waits for it instead of answering nothing", async () => {
  await deactivate();
  let open!: () => void;
  LanguageClient.startGate = new Promise<void>((r) => (open = r));
  ext = activate(context as never);
  await tick();
  assert.equal(client().state, 3, "starting");
  let answered: unknown[] | undefined;
  const pending = complete().then((items) => (answered = items));
  await tick();
  assert.equal(answered, undefined, "still waiting for the server");
  open();
  await pending;
  assert.equal(answered!.length, 1);
  // Cancelled while waiting (the user typed on): answered empty at once, no request sent.
  await deactivate();
  LanguageClient.startGate = new Promise<void>((r) => (open = r));
  ext = activate(context as never);
  await tick();
  const src = new vscode.CancellationTokenSource();
  const waiting = complete("python", 1, src.token);
  src.cancel();
  assert.deepEqual(await waiting, []);
  assert.equal(client().requests.filter((r) => r.method === INLINE_METHOD).length, 0);
  open();
});

test("once the server runs, and when completions are turned back on, ghost text is asked for again", async () => {
  const TRIGGER = "editor.action.inlineSuggest.trigger";
  const triggers = () => vscode.executedCommands.filter((c) => c.id === TRIGGER).length;
  assert.equal(triggers(), 1, "asked at start-up: text typed before activation gets its suggestion");
  await vscode.commands.executeCommand("gemmaLsp.toggle"); // off: nothing to ask
  assert.equal(triggers(), 1);
  await vscode.commands.executeCommand("gemmaLsp.toggle"); // on again
  assert.equal(triggers(), 2);
  vscode.window.activeTextEditor = { document: { languageId: "markdown" } }; // off for markdown
  await vscode.commands.executeCommand("gemmaLsp.restart");
  assert.equal(triggers(), 2);
});

test("snippet results become SnippetString", async () => {
  LanguageClient.handlers.set(INLINE_METHOD, () => [{ insertText: { kind: "snippet", value: "f(${1:a})" } }]);
  const items = await complete();
  assert.ok(items[0].insertText instanceof vscode.SnippetString);
  assert.equal(items[0].insertText.value, "f(${1:a})");
});

test("disabled languages and the global toggle send no request", async () => {
  assert.deepEqual(await complete("markdown"), [], "markdown is off by default");
  await vscode.setSetting("gemmaLsp.languages", { "*": false, rust: true });
  assert.deepEqual(await complete("python"), []);
  assert.equal((await complete("rust")).length, 1);
  await vscode.commands.executeCommand("gemmaLsp.toggle");
  assert.deepEqual(vscode.updates.at(-1), { key: "gemmaLsp.enabled", value: false, target: 1 });
  assert.deepEqual(await complete("rust"), []);
  assert.equal(client().requests.filter((r) => r.method === INLINE_METHOD).length, 1);
  await vscode.commands.executeCommand("gemmaLsp.toggle");
  assert.equal(vscode.settings.get("gemmaLsp.enabled"), true);
  assert.equal((await complete("rust")).length, 1);
});

test("a request cancelled during the debounce never reaches the server", async () => {
  vscode.settings.set("gemmaLsp.debounceMs", 200);
  const src = new vscode.CancellationTokenSource();
  const pending = complete("python", 1, src.token);
  src.cancel();
  assert.deepEqual(await pending, []);
  assert.equal(client().requests.filter((r) => r.method === INLINE_METHOD).length, 0);
});

test("server errors are logged and answered with no items", async () => {
  LanguageClient.handlers.set(INLINE_METHOD, () => {
    throw new Error("boom");
  });
  assert.deepEqual(await complete(), []);
  assert.ok((ext.output as unknown as vscode.MockOutputChannel).lines.some((l: string) => l.includes("boom")));
});

test("status bar and show-stats command show acceptance, reuse and latency", async () => {
  await vscode.commands.executeCommand("gemmaLsp.showStats");
  assert.equal(ext.status.text, "$(sparkle) acc 75% · reuse 90% · 150 ms");
  const out = (ext.output as unknown as vscode.MockOutputChannel).lines.join("\n");
  assert.match(out, /75% \(30\/40 drafted tokens\)/);
  assert.match(out, /90% \(900\/1000 prompt tokens\)/);
  assert.match(out, /p50 80 ms, p95 200 ms, last 150 ms/);
  await vscode.commands.executeCommand("gemmaLsp.toggle");
  assert.equal(ext.status.text, "$(circle-slash) gemma");
});

test("status refreshes by itself after a completion", async () => {
  await complete();
  await new Promise((r) => setTimeout(r, 400));
  assert.ok(client().requests.some((r) => r.method === STATS_METHOD));
  assert.match(ext.status.text, /acc 75%/);
});

test("a server without gemma/stats keeps working", async () => {
  LanguageClient.handlers.delete(STATS_METHOD);
  await vscode.commands.executeCommand("gemmaLsp.showStats");
  assert.equal(ext.status.text, "$(sparkle) gemma");
  assert.equal((await complete()).length, 1);
});

test("changing a server setting sends workspace/didChangeConfiguration", async () => {
  await vscode.setSetting("gemmaLsp.maxTokens", 16);
  const n = client().notifications.at(-1)!;
  assert.equal(n.method, "workspace/didChangeConfiguration");
  assert.deepEqual(n.params, {
    settings: { gemmaLsp: { model: null, draftModel: null, drafter: "auto", maxTokens: 16, singleLine: "auto", temperature: 0, retrieval: "stdlib" } },
  });
  assert.equal(LanguageClient.instances.length, 1, "no restart");
});

test("changing the server path restarts the server; so does the restart command", async () => {
  const first = client();
  await vscode.setSetting("gemmaLsp.serverPath", "/other/gemma-lsp");
  await tick();
  await tick();
  assert.equal(first.stopped, true);
  assert.equal(LanguageClient.instances.length, 2);
  assert.equal(client().serverOptions.command, "/other/gemma-lsp");
  await vscode.commands.executeCommand("gemmaLsp.restart");
  assert.equal(LanguageClient.instances.length, 3);
  assert.equal(client().state, 2);
});

test("a server that cannot start: error with a doctor hint, warning in the status bar", async () => {
  await deactivate();
  vscode.messages.length = 0;
  LanguageClient.failStart = new Error("spawn gemma-lsp ENOENT");
  vscode.setNextErrorChoice("Open Settings");
  ext = activate(context as never);
  await tick();
  await tick();
  const err = vscode.messages.find((m) => m.level === "error")!;
  assert.match(err.text, /gemma-lsp doctor/);
  assert.match(err.text, /ENOENT/);
  assert.ok(vscode.executedCommands.some((c) => c.id === "workbench.action.openSettings"));
  assert.equal(ext.status.text, "$(warning) gemma");
  assert.deepEqual(await complete(), [], "no client running, no items");
});

test("popup completion middleware is off by default and respects the switches", async () => {
  const mw = client().clientOptions.middleware;
  let calls = 0;
  const next = () => {
    calls++;
    return ["item"];
  };
  assert.equal(mw.provideCompletionItem(doc(), null, null, null, next), undefined);
  await vscode.setSetting("gemmaLsp.popupCompletion", true);
  assert.deepEqual(mw.provideCompletionItem(doc(), null, null, null, next), ["item"]);
  assert.equal(mw.provideCompletionItem(doc("markdown"), null, null, null, next), undefined);
  assert.equal(calls, 1);
});

test("workspace/configuration answers gemmaLsp with the server settings", async () => {
  vscode.settings.set("gemmaLsp.drafter", "ngram");
  const mw = client().clientOptions.middleware;
  const res = await mw.workspace.configuration(
    { items: [{ section: "gemmaLsp" }, { section: "editor" }] },
    null,
    async () => [{ raw: true }, { tabSize: 4 }],
  );
  assert.equal(res[0].drafter, "ngram");
  assert.ok(!("serverPath" in res[0]));
  assert.deepEqual(res[1], { tabSize: 4 });
});

test("deactivate stops the server and disposes the UI", async () => {
  const c = client();
  await deactivate();
  assert.equal(c.stopped, true);
  assert.equal((ext.status as unknown as vscode.MockStatusBarItem).disposed, true);
  assert.equal(vscode.inlineProviders.length, 0);
  assert.equal(vscode.registeredCommands.size, 0);
});
