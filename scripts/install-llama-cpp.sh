#!/usr/bin/env bash
# Builds llama-cpp-python (for `gemma-lsp bench vs-llama-cpp` only) into .venv, ~5 min on 2 cores.
# AMX is left out on purpose: in VMs that do not grant AMX tile state (seen here), llama.cpp's
# native build faults in `ldtilecfg`. AVX-512 / VNNI keep llama.cpp at full speed on such CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  flags="$flags -DGGML_AVX512=ON"
  grep -qw avx512_vnni /proc/cpuinfo && flags="$flags -DGGML_AVX512_VNNI=ON"
  grep -qw avx512_bf16 /proc/cpuinfo && flags="$flags -DGGML_AVX512_BF16=ON"
  grep -qw avx512vbmi /proc/cpuinfo && flags="$flags -DGGML_AVX512_VBMI=ON"
fi
grep -qw avx_vnni /proc/cpuinfo 2>/dev/null && flags="$flags -DGGML_AVX_VNNI=ON"
echo "building llama-cpp-python with: $flags"
CMAKE_ARGS="$flags" "$PY" -m pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
# Its own dependencies (--no-deps above keeps pip from rebuilding or upgrading torch's numpy).
"$PY" -m pip install "diskcache>=5.6.1" "jinja2>=2.11.3" "numpy>=1.20.0" "typing-extensions>=4.5.0" \
  "uvicorn>=0.22.0" "fastapi>=0.100.0" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1"
