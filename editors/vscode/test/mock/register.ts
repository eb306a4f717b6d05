// Loaded with `node --require` before the tests: makes `require("vscode")` and
// `require("vscode-languageclient/node")` resolve to the mocks in this folder.
import Module = require("module");

const mocks: Record<string, string> = {
  vscode: require.resolve("./vscode"),
  "vscode-languageclient/node": require.resolve("./languageclient"),
};
const M = Module as unknown as { _resolveFilename: (request: string, ...rest: unknown[]) => string };
const original = M._resolveFilename;
M._resolveFilename = function (request: string, ...rest: unknown[]): string {
  if (request in mocks) return mocks[request];
  return original.call(this, request, ...rest);
};
