#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: set up .venv (with test extras), prepare the
# default model, build/test/package the VS Code extension, install the real editors, then
# run pytest (real-model and real-editor tests included). Extra arguments go to pytest
# (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test || exit 1

export GEMMA_LSP_REQUIRE_MODEL=1   # the model was just prepared: its absence is a failure, not a skip

# The VS Code extension first: its unit tests, and the .vsix the real-editor test installs.
if command -v npm >/dev/null 2>&1; then
  echo "==> VS Code extension: build, unit tests, package"
  (cd editors/vscode && npm ci --no-audit --no-fund && npm run build && npm test && npm run package) || exit 1
else
  echo "npm not found: skipping the VS Code extension build (and its real-editor test)" >&2
fi

# Real editors for the end-to-end tests (code-server, Emacs with eglot/lsp-mode/company,
# Chromium), installed once and cached (see the script). GEMMA_LSP_SKIP_EDITORS=1 skips them.
if [ -z "${GEMMA_LSP_SKIP_EDITORS:-}" ]; then
  bash scripts/install-editors.sh || { echo "test.sh: the real-editor tests need the editors above;" \
    "fix the install, or set GEMMA_LSP_SKIP_EDITORS=1 to skip those tests" >&2; exit 1; }
  export GEMMA_LSP_REQUIRE_EDITORS=1
fi

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
