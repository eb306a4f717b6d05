"""`gemma-lsp prepare` on a disk that really fills up, at each stage of its work.

    unshare --mount python tests/full_disk.py [--json full_disk.json]   # root; ~8 min

In a private mount namespace (nothing outside sees it, and it goes away with the process)
the cache lives on a tmpfs whose size is chosen so that the disk fills during one stage:

- 512 MiB: while the default model's GGUF (~1.12 GB) is assembled from its parts;
- 2,500 MiB: while the bf16 copy (~3.55 GB) is written, the GGUF whole beside it;
- 4,800 MiB: while the GGUF's own weights (~1.0 GB) are written, after the bf16 copy;

then the tmpfs grows to 8 GiB (the user freed space) and `prepare` runs again.

After each failure: exit code 2, a message that says the disk is full and what to do (no
traceback), and every file under a final name whole (the checker opens each). After the
last run: nothing done twice (the bf16 copy made under 4,800 MiB is kept), and the model
completes. The disk is real (the kernel's ENOSPC from a filesystem), not an injected error;
`tests/test_model_errors.py` covers the same message with an injected one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

STAGES = [("assembling the GGUF", "512m"), ("writing the bf16 copy", "2500m"), ("writing the GGUF weights", "4800m")]
FREED = "8g"


def _mount(where: Path, size: str, remount: bool = False) -> None:
    opts = f"remount,size={size}" if remount else f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "gemma-lsp-full-disk", str(where)], check=True)


def _gemma(args: list[str], cache: Path, timeout: float = 1200) -> tuple[int, str, float, str]:
    """(exit code, stdout and stderr, seconds, stdout)."""
    env = dict(os.environ, GEMMA_LSP_CACHE=str(cache))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "gemma_lsp", *args], capture_output=True, text=True, timeout=timeout,
                       env=env)
    return r.returncode, r.stdout + r.stderr, round(time.perf_counter() - t0, 1), r.stdout


def _last_error(out: str) -> str:
    lines = [ln for ln in out.splitlines() if "error" in ln.lower()]
    return lines[-1] if lines else out.strip().splitlines()[-1] if out.strip() else ""


def run() -> dict:
    from test_model_files import _check_cache

    where = Path(tempfile.mkdtemp(prefix="gemma-lsp-full-disk-"))
    _mount(where, STAGES[0][1])
    cache = where / "cache"
    result: dict = {"stages": [], "problems": []}
    try:
        for i, (stage, size) in enumerate(STAGES):
            if i:
                _mount(where, size, remount=True)
            rc, out, secs, _ = _gemma(["prepare"], cache)
            whole = _check_cache(cache)  # raises on a file under a final name that is not whole
            used = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) >> 20
            err = _last_error(out)
            result["stages"].append({"stage": stage, "size": size, "exit": rc, "seconds": secs, "error": err,
                                     "whole": whole, "left_mib": used})
            if rc != 2 or "Disk full" not in err or "Traceback" in out:
                result["problems"].append(f"{stage} ({size}): exit {rc}, {err!r}"
                                          + (" with a traceback" if "Traceback" in out else ""))
        _mount(where, FREED, remount=True)
        rc, out, secs, _ = _gemma(["prepare"], cache)
        result["final"] = {"size": FREED, "exit": rc, "seconds": secs, "converted_again": "Converting" in out,
                           "whole": _check_cache(cache)}
        if rc != 0 or "ready:" not in out:
            result["problems"].append(f"prepare after freeing space: exit {rc}: {out[-1500:]}")
        if "Converting" in out:
            result["problems"].append("the bf16 copy made before the last failure was made again")
        f = where / "x.py"
        f.write_text("def fib(n):\n    if n < 2:\n        return n\n    return ")
        rc, out, secs, text = _gemma(["complete", f"{f}:4:12", "--max-tokens", "8"], cache, timeout=600)
        result["completion"] = text if rc == 0 else f"exit {rc}"
        if rc != 0 or not text.strip():
            result["problems"].append(f"complete after prepare: exit {rc}: {out[-1500:]}")
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    r = run()
    print(json.dumps(r, indent=1))
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
