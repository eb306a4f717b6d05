"""Write a GGUF of another quantization type with llama.cpp's own quantizer (for benchmarks).

Usage: .venv/bin/python scripts/requantize.py IN.gguf|default OUT.gguf Q8_0|Q5_K_M|Q4_K_M|Q6_K|Q4_0|Q5_0
("default": the embedded model's Q4_K_M file, assembled from its parts)

Needs llama-cpp-python (scripts/install-llama-cpp.sh). Only the embedded Q4_K_M file can be had
here, so the other types are made from it: the same format and speed as a file made from the
original float weights, not the same rounding of the original model.
"""

from __future__ import annotations

import sys
import time

TYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
         "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
         "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0"}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in TYPES:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import llama_cpp
    except ImportError:
        print("requantize needs llama-cpp-python: bash scripts/install-llama-cpp.sh", file=sys.stderr)
        return 2

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = 0  # all cores
    params.allow_requantize = True  # the input is itself quantized
    params.ftype = getattr(llama_cpp, TYPES[argv[2]])
    if argv[0] != "default":
        return quantize(llama_cpp, params, argv[0], argv[1], argv[2])
    from gemma_lsp.models.default import assembled_gguf

    with assembled_gguf() as path:
        return quantize(llama_cpp, params, str(path), argv[1], argv[2])


def quantize(llama_cpp, params, src: str, dest: str, kind: str) -> int:
    start = time.monotonic()
    if llama_cpp.llama_model_quantize(src.encode(), dest.encode(), params) != 0:
        print(f"llama.cpp could not quantize {src}", file=sys.stderr)
        return 1
    print(f"wrote {dest} ({kind}) in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
