"""gemma-lsp's own CPU kernels (kernels/): built once on this machine, or not used at all.

They need an x86-64 CPU with AVX2 (AVX512-VNNI where it has it: chosen at run time), a
C++ compiler and ninja. The build (~20 s) runs at `gemma-lsp prepare` or at the first load,
into the cache directory, keyed by the sources and the torch version. Anything missing means
the GGUF path runs torch's int4/int8 kernels instead, which compute the same model less
quickly: `status()` says which and why. `GEMMA_LSP_NATIVE=0` turns them off,
`GEMMA_LSP_NATIVE=avx2` keeps to the AVX2 kernels. With AVX512-VNNI, Q4_K and Q6_K weights
run as tiles of 16 output columns (tiles(), kernels/tiles.h), and the lean forward's attention
runs attend() (kernels/attend.h) and its norms, rotary embedding and gated product
rms_norm(), rope() and silu_mul() (kernels/pointwise.h).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ..paths import cache_dir
from .formats import FORMATS, TILE

SOURCES = Path(__file__).with_name("kernels")
CPU_FLAGS = ("avx2", "fma", "f16c")
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]  # the AVX512 kernels carry their own target

_state: dict[str, str | None] = {}  # "error": None once loaded, else why not


def status() -> str | None:
    """None when the kernels are loaded (building them if needed); otherwise the reason they are not."""
    if "error" not in _state:
        _state["error"] = _load()
    return _state["error"]


def available() -> bool:
    return status() is None


def prerequisites() -> str | None:
    """What keeps the kernels from being built here, without building them; None if nothing."""
    if os.environ.get("GEMMA_LSP_NATIVE", "1") == "0":
        return "turned off by GEMMA_LSP_NATIVE=0"
    missing = [f for f in CPU_FLAGS if f not in cpu_flags()]
    if platform.machine() not in ("x86_64", "AMD64") or missing:
        return f"this CPU lacks {', '.join(missing) or 'x86-64'}"
    if shutil.which("ninja", path=os.pathsep.join([_bindir(), os.environ.get("PATH", "")])) is None:
        return "ninja is not installed (pip install ninja)"
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        return "no C++ compiler (c++) on PATH"
    return None


def built() -> bool:
    name, where = _target()
    return (where / f"{name}.so").is_file()


def _load() -> str | None:
    error = prerequisites() or _build()
    if error is None and os.environ.get("GEMMA_LSP_NATIVE") == "avx2":
        isa("avx2")
    return error


def isa(want: str = "") -> str:
    """The instruction set the kernels run ("avx512" or "avx2"); `want` switches it (tests).
    Weights already tiled (tiles()) keep running the AVX512 tile kernels."""
    return torch.ops.gemma_lsp.isa(want)


def _bindir() -> str:
    return str(Path(sys.executable).parent)  # pip's ninja lands next to the interpreter


def _target() -> tuple[str, Path]:
    h = hashlib.sha256(torch.__version__.encode() + " ".join(CFLAGS).encode())
    for f in sorted(SOURCES.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    key = h.hexdigest()[:12]
    return f"gemma_lsp_kernels_{key}", cache_dir() / "kernels" / key


def _build() -> str | None:
    import fcntl

    from torch.utils.cpp_extension import load

    name, where = _target()
    where.mkdir(parents=True, exist_ok=True)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([_bindir(), path])
    try:
        with open(where / "gemma-lsp.lock", "w") as lock:
            # One build at a time across processes. The kernel drops this lock when its holder
            # dies; torch's own lock file does not go away with it, and torch would wait on a
            # killed build's forever: under our lock, any such file is stale.
            fcntl.flock(lock, fcntl.LOCK_EX)
            (where / "lock").unlink(missing_ok=True)
            if not built():
                print("Building gemma-lsp's CPU kernels (one time, ~20 s)...", file=sys.stderr, flush=True)
            load(name, [str(SOURCES / "ops.cpp")], extra_cflags=CFLAGS, extra_include_paths=[str(SOURCES)],
                 extra_ldflags=["-fopenmp"], build_directory=str(where), is_python_module=False, verbose=False)
    except Exception as e:  # a compiler error, a torch without headers, ...: fall back, and say why
        return f"build failed ({type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e})"
    finally:
        os.environ["PATH"] = path
    return None


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def op(kind: str, tiled: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The op y = x · dequant(w)ᵀ for blocks of `kind` (formats.KINDS), or for `tile(kind, w)`'s
    tiles; the kernels must be loaded (available())."""
    return getattr(torch.ops.gemma_lsp, f"{kind}_tiled_mm" if tiled else f"{kind}_mm")


TILED = tuple(f.kind for f in FORMATS if f.tiled)  # kinds with tile kernels (kernels/tiles.h: AVX512-VNNI)


def tiles(kind: str, rows: int) -> bool:
    """Whether weights of `kind` with `rows` output rows run as tiles here: 16 columns share each
    activation, a third of the row kernels' work per row of a verify. AVX512-VNNI only."""
    return kind in TILED and rows % TILE == 0 and isa() == "avx512"


def describe() -> str:
    """What the block kernels run here, e.g. "avx512, q4k/q6k tiled": it keys the cached cost curve."""
    return isa() + (f", {'/'.join(TILED)} tiled" if isa() == "avx512" else "")


def tile(kind: str, w: torch.Tensor) -> torch.Tensor:
    """Row blocks [N, K/256, bytes] -> tiles [N/16, K/256, 16·bytes] (the same bytes, rearranged)."""
    return getattr(torch.ops.gemma_lsp, f"{kind}_tile")(w.contiguous())


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float) -> torch.Tensor:
    """Causal attention of q [1, H, m, D] over k, v [1, KV, ≥ start + m, D]: row r sees positions
    0..start + r (kernels/attend.h)."""
    return torch.ops.gemma_lsp.attend(q, k, v, start, scale)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Llama/Qwen2 RMSNorm of x [1, m, D] in one call (kernels/pointwise.h)."""
    return torch.ops.gemma_lsp.rms_norm(x, w, eps)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotary embedding of x [1, m, heads·D] (a q or k projection) -> [1, heads, m, D]."""
    return torch.ops.gemma_lsp.rope(x, cos, sin, heads)


def silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g)·u of [1, m, I] views (the fused gate/up projection's halves)."""
    return torch.ops.gemma_lsp.silu_mul(g, u)


def mm(kind: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return op(kind)(x, w)
