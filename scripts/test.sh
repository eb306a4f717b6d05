#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: set up .venv (with test extras), prepare the
# default model, run pytest (real-model tests included), then build/test/package the VS Code
# extension when npm is available. Extra arguments go to pytest (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1

export GEMMA_LSP_REQUIRE_MODEL=1   # the model was just prepared: its absence is a failure, not a skip

# The openai backend is tested against a real llama.cpp server (llama-cpp-python[server]),
# built once and cached (see the script). GEMMA_LSP_SKIP_LLAMA_SERVER=1 skips those tests.
if [ -z "${GEMMA_LSP_SKIP_LLAMA_SERVER:-}" ]; then
  if ! .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
    bash scripts/install-llama-cpp.sh || { echo "test.sh: llama-cpp-python[server] is needed by the backend tests;" \
      "fix the install above, or set GEMMA_LSP_SKIP_LLAMA_SERVER=1 to skip them" >&2; exit 1; }
  fi
  export GEMMA_LSP_REQUIRE_LLAMA_SERVER=1
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: the checkout is broken (expected tests under tests/)" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"

if command -v npm >/dev/null 2>&1; then
  echo "==> VS Code extension: build, unit tests, package"
  (cd editors/vscode && npm ci --no-audit --no-fund && npm run build && npm test && npm run package) || exit 1
else
  echo "npm not found: skipping the VS Code extension build" >&2
fi
