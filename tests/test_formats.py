"""The block-format registry (quant/formats.py) against what else knows the formats: the
GGUF library's block sizes and the C++ kernels' own table (kernels/ops.cpp, common.h), read
from the source, so a format added on one side only fails here even where the kernels
cannot be built."""

from __future__ import annotations

import re
from pathlib import Path

from gguf import GGML_QUANT_SIZES

from gemma_lsp.quant import formats
from gemma_lsp.quant.formats import FORMATS, KERNEL_ROWS

KERNELS = Path(formats.__file__).parent / "kernels"


def _constants() -> dict[str, int]:
    text = (KERNELS / "common.h").read_text() + (KERNELS / "ops.cpp").read_text()
    out = {k: int(v) for k, v in re.findall(r"constexpr int (\w+) = (\d+);", text)}
    for struct, size in re.findall(r"struct (\w+) \{[^}]*?static constexpr int bytes = (\d+);", text, re.S):
        out[f"{struct}::bytes"] = int(size)
    return out


def test_gguf_block_shapes_match_the_gguf_library():
    for f in FORMATS:
        assert GGML_QUANT_SIZES[f.gguf] == (f.weights, f.file_bytes), f.kind


def test_the_cpp_table_is_the_registry():
    ops = (KERNELS / "ops.cpp").read_text()
    consts = _constants()
    rows = re.findall(r"^GEMMA_LSP_FORMAT\(\w+, (\w+), (\w+), ([\w:]+), \w+\)", ops, re.M)
    cpp = {name: (consts.get(w, None) if not w.isdigit() else int(w), consts[b] if not b.isdigit() else int(b))
           for name, w, b in rows}
    assert cpp == {f.kind: (f.weights, f.kernel_bytes) for f in FORMATS}
    defs = set(re.findall(r'm\.def\("(\w+)\(', ops))
    for f in FORMATS:
        assert f"{f.kind}_mm" in defs, f.kind
        assert ({f"{f.kind}_tile", f"{f.kind}_tiled_mm"} <= defs) == f.tiled, f.kind
    assert consts["MAX_ROWS"] == KERNEL_ROWS


def test_repacking_keeps_every_byte_of_a_stored_block():
    import numpy as np

    rng = np.random.default_rng(0)
    for f in FORMATS:
        if f.as_stored:
            raw = rng.integers(0, 256, (3, 512 // f.weights * f.file_bytes), dtype=np.uint8)
            out = f.repack(raw, 3, 512)
            assert out.shape == (3, 512 // f.weights, f.kernel_bytes) and out.tobytes() == raw.tobytes(), f.kind
