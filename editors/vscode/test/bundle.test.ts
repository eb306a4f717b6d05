// Smoke test of the esbuild bundle (dist/extension.js, made by `npm run build`): it must
// load with only `vscode` external and export activate/deactivate. The real
// vscode-languageclient inside the bundle subclasses many VS Code classes at load time, so
// the mock's missing names are filled in with dummies here.
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as path from "path";

const bundle = path.join(__dirname, "..", "..", "dist", "extension.js");

test("dist/extension.js loads and exports activate/deactivate", (t) => {
  if (!fs.existsSync(bundle)) {
    t.skip("dist/extension.js not built: run `npm run build` first");
    return;
  }
  const mockPath = require.resolve("vscode");
  const mock = require(mockPath);
  class Dummy {
    constructor(..._args: unknown[]) {}
  }
  const permissive = new Proxy(mock, {
    get(target, key) {
      if (key in target) return target[key];
      if (typeof key === "string" && /^[A-Z]/.test(key)) return Dummy;
      return {};
    },
  });
  require.cache[mockPath]!.exports = permissive;
  try {
    const ext = require(bundle);
    assert.equal(typeof ext.activate, "function");
    assert.equal(typeof ext.deactivate, "function");
  } finally {
    require.cache[mockPath]!.exports = mock;
  }
});
