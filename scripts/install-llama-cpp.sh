#!/usr/bin/env bash
# Installs llama-cpp-python[server] 0.3.36 into .venv: llama.cpp's engine for
# `gemma-lsp bench vs-llama-cpp`, and its OpenAI-compatible server, the real server the
# `openai` backend's tests run against. It builds from the sdist (~9 min on 2 cores) once;
# the wheel is cached per instruction-set flags under $GEMMA_LSP_WHEELS
# (default ~/.cache/gemma-lsp-build/wheels), so later runs install in seconds.
# AMX is left out on purpose: in VMs that do not grant AMX tile state (seen here), llama.cpp's
# native build faults in `ldtilecfg`. AVX-512 / VNNI keep llama.cpp at full speed on such CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
VERSION=0.3.36
trap 'echo "install-llama-cpp.sh: could not install llama-cpp-python $VERSION (it needs PyPI, cmake and a C++ compiler: apt-get install build-essential cmake)" >&2' ERR
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  flags="$flags -DGGML_AVX512=ON"
  grep -qw avx512_vnni /proc/cpuinfo && flags="$flags -DGGML_AVX512_VNNI=ON"
  grep -qw avx512_bf16 /proc/cpuinfo && flags="$flags -DGGML_AVX512_BF16=ON"
  grep -qw avx512vbmi /proc/cpuinfo && flags="$flags -DGGML_AVX512_VBMI=ON"
fi
grep -qw avx_vnni /proc/cpuinfo 2>/dev/null && flags="$flags -DGGML_AVX_VNNI=ON"
WHEELS="${GEMMA_LSP_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-lsp-build/wheels}"
key=$(printf '%s %s' "$flags" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-12)
dir="$WHEELS/llama-cpp-python-$VERSION-$key"
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $VERSION with: $flags (cached in $dir)"
  rm -rf "$dir.tmp"
  CMAKE_ARGS="$flags" "$PY" -m pip wheel --no-deps --no-cache-dir -w "$dir.tmp" "llama-cpp-python==$VERSION"
  mv "$dir.tmp" "$dir"
fi
"$PY" -m pip install -q --no-deps --force-reinstall "$dir"/llama_cpp_python-*.whl
# Its own dependencies and the server's (--no-deps above keeps pip from touching torch's numpy).
"$PY" -m pip install -q "diskcache>=5.6.1" "jinja2>=2.11.3" "numpy>=1.20.0" "typing-extensions>=4.5.0" \
  "uvicorn>=0.22.0" "fastapi>=0.100.0" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
"$PY" -c "import llama_cpp.server.app" && echo "llama-cpp-python[server] $VERSION ready"
