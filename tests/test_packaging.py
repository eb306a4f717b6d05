"""What a user's install carries: the package and its kernels' sources, no benchmark code
(no HumanEval runner, no plotting); and `gemma-lsp bench` from a clone or, from a wheel, a
clear message."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from gemma_lsp.cli import benchmarks_root
from gemma_lsp.errors import GemmaLspError

REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    """The file names in a wheel built from a copy of the source (the build writes into it)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("gemma_lsp", "benchmarks"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so", "build"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("gemma_lsp-*.whl")
    return zipfile.ZipFile(whl).namelist()


def test_the_wheel_ships_no_benchmark_code(wheel_names):
    assert "gemma_lsp/cli.py" in wheel_names and "gemma_lsp/quant/kernels/common.h" in wheel_names
    bench = [n for n in wheel_names if n.startswith("benchmarks/") or "/bench/" in n or "humaneval" in n]
    assert bench == []


def test_a_wheel_install_says_where_the_benchmarks_are(tmp_path):
    (tmp_path / "site-packages" / "gemma_lsp").mkdir(parents=True)
    with pytest.raises(GemmaLspError, match="run from a clone"):
        benchmarks_root(tmp_path / "site-packages" / "gemma_lsp")
    assert benchmarks_root(REPO / "gemma_lsp") == REPO


def test_gemma_lsp_bench_runs_the_clone_s_benchmarks():
    """The CLI forwards to `python -m benchmarks`, help included (its own parser)."""
    done = subprocess.run([sys.executable, "-m", "gemma_lsp", "bench", "speculative", "--device-script"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("#!/usr/bin/env bash") and "--device cuda" in done.stdout
    done = subprocess.run([sys.executable, "-m", "gemma_lsp", "bench", "--help"], capture_output=True, text=True,
                          timeout=120, cwd="/")
    assert done.returncode == 0 and "vs-llama-cpp" in done.stdout
