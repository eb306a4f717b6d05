// Unit tests of the pure logic (no vscode involved).
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as path from "path";
import {
  affectsAny,
  answerConfiguration,
  DEFAULT_LANGUAGES,
  didChangeConfigurationParams,
  formatStatsLong,
  formatStatsShort,
  initializationOptions,
  inlineCompletionParams,
  isEnabledFor,
  parseStats,
  percent,
  serverCommand,
  SERVER_KEYS,
  toInlineItems,
  toLspTriggerKind,
  toServerSettings,
} from "../src/logic";

const manifest = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "..", "package.json"), "utf8"));
const props: Record<string, { default?: unknown }> = manifest.contributes.configuration.properties;

function defaults(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(props)) out[k.replace(/^gemmaLsp\./, "")] = v.default;
  return out;
}

test("manifest defaults map to the server's defaults", () => {
  assert.deepEqual(toServerSettings(defaults()), {
    model: null,
    draftModel: null,
    drafter: "auto",
    maxTokens: 64,
    singleLine: "auto",
    temperature: 0,
    retrieval: "stdlib",
  });
  for (const k of SERVER_KEYS) assert.ok(`gemmaLsp.${k}` in props, `gemmaLsp.${k} is declared`);
  assert.deepEqual(props["gemmaLsp.languages"].default, DEFAULT_LANGUAGES);
  assert.equal(props["gemmaLsp.serverPath"].default, "gemma-lsp");
});

test("toServerSettings keeps valid values and drops extension-only keys", () => {
  const s = toServerSettings({
    model: " /models/qwen ",
    draftModel: "gemma4-e2b",
    drafter: "ngram",
    maxTokens: 128.7,
    singleLine: "always",
    timeBudgetMs: 800,
    temperature: 0.2,
    retrieval: "none",
    backend: "http://127.0.0.1:8000/v1",
    backendModel: "qwen",
    apiKeyEnv: "MY_KEY",
    serverPath: "/x/gemma-lsp",
    enabled: false,
    languages: { "*": false },
  });
  assert.deepEqual(s, {
    model: "/models/qwen",
    draftModel: "gemma4-e2b",
    drafter: "ngram",
    maxTokens: 128,
    singleLine: "always",
    timeBudgetMs: 800,
    temperature: 0.2,
    retrieval: "none",
    backend: "http://127.0.0.1:8000/v1",
    backendModel: "qwen",
    apiKeyEnv: "MY_KEY",
  });
  assert.equal(toServerSettings({ backend: "ftp://x" }).backend, undefined);
  assert.equal(toServerSettings({ apiKeyEnv: "sk-the-key-itself!" }).apiKeyEnv, undefined);
});

test("toServerSettings falls back on invalid values", () => {
  const s = toServerSettings({
    model: "",
    draftModel: 3,
    drafter: "magic",
    maxTokens: 0,
    singleLine: "sometimes",
    timeBudgetMs: null,
    temperature: -1,
    retrieval: "everything",
  });
  assert.deepEqual(s, {
    model: null,
    draftModel: null,
    drafter: "auto",
    maxTokens: 64,
    singleLine: "auto",
    temperature: 0,
  });
  assert.ok(!("timeBudgetMs" in s));
  assert.ok(!("retrieval" in s));
  assert.deepEqual(toServerSettings(undefined), toServerSettings({}));
});

test("initializationOptions and didChangeConfiguration wrap the settings in gemmaLsp", () => {
  const raw = { drafter: "model", maxTokens: 32, draftModel: "/d" };
  assert.deepEqual(initializationOptions(raw), { gemmaLsp: toServerSettings(raw) });
  assert.deepEqual(didChangeConfigurationParams(raw), { settings: { gemmaLsp: toServerSettings(raw) } });
});

test("answerConfiguration answers the gemmaLsp section and its keys", () => {
  const raw = { maxTokens: 10, drafter: "none" };
  const res = answerConfiguration(
    [{ section: "gemmaLsp" }, { section: "gemmaLsp.maxTokens" }, { section: "gemmaLsp.nope" }, { section: "editor" }, {}],
    raw,
    (s) => `fallback:${s}`,
  );
  assert.deepEqual(res[0], toServerSettings(raw));
  assert.equal(res[1], 10);
  assert.equal(res[2], null);
  assert.equal(res[3], "fallback:editor");
  assert.equal(res[4], "fallback:undefined");
});

test("serverCommand: default, custom path, ~ expansion, args", () => {
  assert.deepEqual(serverCommand({}), { command: "gemma-lsp", args: ["serve"] });
  assert.deepEqual(serverCommand({ serverPath: "  " }), { command: "gemma-lsp", args: ["serve"] });
  assert.deepEqual(serverCommand({ serverPath: "~/venv/bin/gemma-lsp" }, { HOME: "/home/u" }), {
    command: "/home/u/venv/bin/gemma-lsp",
    args: ["serve"],
  });
  assert.deepEqual(serverCommand({ serverArgs: ["serve", "--log-level", "debug"] }).args, [
    "serve",
    "--log-level",
    "debug",
  ]);
  assert.deepEqual(serverCommand({ serverArgs: ["serve", 3] }).args, ["serve"]);
});

test("affectsAny checks gemmaLsp.<key>", () => {
  const changed = new Set(["gemmaLsp.serverPath"]);
  assert.equal(affectsAny((s) => changed.has(s), ["serverPath", "serverArgs"]), true);
  assert.equal(affectsAny((s) => changed.has(s), ["model"]), false);
});

test("isEnabledFor: global switch, per-language entries, '*' default", () => {
  assert.equal(isEnabledFor("python", true, undefined), true);
  assert.equal(isEnabledFor("markdown", true, undefined), false, "defaults turn markdown off");
  assert.equal(isEnabledFor("python", false, { "*": true }), false, "global switch wins");
  assert.equal(isEnabledFor("python", undefined, { "*": false, python: true }), true);
  assert.equal(isEnabledFor("rust", true, { "*": false, python: true }), false);
  assert.equal(isEnabledFor("rust", true, { python: false }), true, "no '*' means enabled");
  assert.equal(isEnabledFor("rust", true, { "*": "yes" }), true, "non-boolean '*' ignored");
  assert.equal(isEnabledFor("rust", true, ["rust"]), true, "array falls back to defaults");
});

const sample = {
  completions: 12,
  prompt_tokens: 2000,
  reused_tokens: 1900,
  tokens: 300,
  drafted: 250,
  accepted: 180,
  target_forwards: 120,
  cancelled: 3,
  latency_ms: { p50: 95.4, p95: 310.2, last: 120.6 },
};

test("parseStats normalizes and formatStats shows acceptance, reuse, latency", () => {
  const s = parseStats(sample)!;
  assert.equal(formatStatsShort(s), "acc 72% · reuse 95% · 121 ms");
  const long = formatStatsLong(s);
  assert.match(long, /completions:\s+12 \(cancelled 3\)/);
  assert.match(long, /72% \(180\/250 drafted tokens\)/);
  assert.match(long, /95% \(1900\/2000 prompt tokens\)/);
  assert.match(long, /2\.50 tokens\/forward/);
  assert.match(long, /p50 95 ms, p95 310 ms, last 121 ms/);
});

test("stats with zeros and missing fields do not divide by zero", () => {
  const s = parseStats({ completions: 0, latency_ms: { p50: null, p95: null } })!;
  assert.equal(s.drafted, 0);
  assert.equal(formatStatsShort(s), "acc – · reuse – · –");
  assert.doesNotMatch(formatStatsLong(s), /NaN|Infinity|undefined/);
  assert.equal(parseStats(null), null);
  assert.equal(parseStats("x"), null);
  assert.equal(parseStats({})!.latency_ms.last, null);
  assert.equal(percent(1, 3), "33%");
  assert.equal(percent(1, 0), "–");
});

test("toInlineItems accepts a list, an array, snippets, ranges and commands", () => {
  const range = { start: { line: 1, character: 2 }, end: { line: 1, character: 5 } };
  assert.deepEqual(toInlineItems({ items: [{ insertText: "foo()" }] }), [{ text: "foo()", snippet: false }]);
  assert.deepEqual(
    toInlineItems([
      {
        insertText: { kind: "snippet", value: "bar(${1:x})" },
        range,
        filterText: "ba",
        command: { title: "t", command: "c", arguments: [1] },
      },
    ]),
    [
      {
        text: "bar(${1:x})",
        snippet: true,
        range,
        filterText: "ba",
        command: { title: "t", command: "c", arguments: [1] },
      },
    ],
  );
});

test("toInlineItems drops empty, malformed and null results", () => {
  assert.deepEqual(toInlineItems(null), []);
  assert.deepEqual(toInlineItems(undefined), []);
  assert.deepEqual(toInlineItems({}), []);
  assert.deepEqual(toInlineItems({ items: null }), []);
  assert.deepEqual(
    toInlineItems({
      items: [
        { insertText: "" },
        { insertText: 5 },
        null,
        { insertText: { kind: "plaintext", value: "x" } },
        { insertText: "ok", range: { start: { line: -1, character: 0 }, end: { line: 0, character: 0 } } },
      ],
    }),
    [{ text: "ok", snippet: false }],
  );
});

test("inline params map VS Code trigger kinds to LSP's", () => {
  assert.equal(toLspTriggerKind(0), 1);
  assert.equal(toLspTriggerKind(1), 2);
  const sel = { range: { start: { line: 0, character: 0 }, end: { line: 0, character: 3 } }, text: "foo" };
  assert.deepEqual(inlineCompletionParams("file:///a.py", { line: 3, character: 4 }, 1, sel), {
    textDocument: { uri: "file:///a.py" },
    position: { line: 3, character: 4 },
    context: { triggerKind: 2, selectedCompletionInfo: sel },
  });
  assert.ok(!("selectedCompletionInfo" in inlineCompletionParams("u", { line: 0, character: 0 }, 0).context));
});
