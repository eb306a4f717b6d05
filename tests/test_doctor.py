"""`gemma-lsp doctor` says what is missing, including the GGUF weights file, and how to fix it."""

from __future__ import annotations

from gemma_lsp.doctor import doctor


def test_doctor_reports_an_unprepared_cache_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))
    rc = doctor()
    out = capsys.readouterr().out
    assert rc == 1
    assert "model cache" in out and "not prepared" in out
    assert "GGUF weights  not extracted" in out
    assert "retrieval     not indexed yet" in out
    assert "run: gemma-lsp prepare" in out or "pip install" in out


def test_doctor_asks_for_the_weights_when_only_bf16_is_prepared(tmp_path, monkeypatch, capsys):
    from gemma_lsp import default_model
    from gemma_lsp.convert import MARKER

    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))
    monkeypatch.setattr(default_model, "part_paths", lambda: [])  # parts "installed"
    d = default_model.prepared_dir()
    d.mkdir(parents=True)
    (d / MARKER).write_text("{}")
    doctor()
    out = capsys.readouterr().out
    assert "(ready)" in out
    assert "weights are not extracted yet" in out
