"""What every benchmark reports about the machine it ran on: figures from one machine say
nothing about another (the same code ran 0.81x plain on an AMD EPYC where it gained on a
Xeon), and a busy machine makes every timing noisy."""

from __future__ import annotations

import os
import platform


def loadavg() -> list[float] | None:
    """System load over 1, 5 and 15 minutes: other processes on the same cores make every timing here noisy."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def isa_flags() -> list[str]:
    """The instruction sets that decide which kernels can run, in a fixed order."""
    from gemma_lsp.quant.native import cpu_flags  # /proc/cpuinfo, read where the kernels read it

    flags = cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]
