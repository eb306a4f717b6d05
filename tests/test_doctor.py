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
    from gemma_lsp.models import default as default_model
    from gemma_lsp.models.convert import MARKER

    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))
    monkeypatch.setattr(default_model, "part_paths", lambda: [])  # parts "installed"
    d = default_model.prepared_dir()
    d.mkdir(parents=True)
    (d / MARKER).write_text("{}")
    doctor()
    out = capsys.readouterr().out
    assert "(ready)" in out
    assert "weights are not extracted yet" in out


def test_doctor_says_whether_the_cpu_kernels_are_built(tmp_path, monkeypatch, capsys):
    from gemma_lsp.quant import native

    monkeypatch.setenv("GEMMA_LSP_CACHE", str(tmp_path))  # an empty cache: nothing built there
    doctor()
    out = capsys.readouterr().out
    why = native.prerequisites()
    if why is None:
        assert "CPU kernels   not built yet (AVX" in out and "CPU kernels are not built yet" in out
    else:
        assert f"CPU kernels   not used: {why}" in out
    monkeypatch.setenv("GEMMA_LSP_NATIVE", "0")
    doctor()
    assert "CPU kernels   not used: turned off by GEMMA_LSP_NATIVE=0" in capsys.readouterr().out


def test_doctor_names_the_backend_and_warns_on_plain_http(capsys, tmp_path, monkeypatch):
    from gemma_lsp.config import Settings
    from gemma_lsp.doctor import _backend

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    problems: list = []
    _backend(problems, Settings().merged({"backend": "local"}))
    out = capsys.readouterr().out
    assert "backend       local (" in out and "not answering" in out and not problems  # started on demand
    _backend(problems, Settings().merged({"backend": "http://127.0.0.1:9/v1"}))  # loopback, nothing listens
    assert [p for p, _ in problems if "plain http" in p] == []
    assert any("does not answer" in p for p, _ in problems)
    problems.clear()
    _backend(problems, Settings().merged({"backend": "http://192.0.2.7:9/v1"}))
    assert any("plain http to another machine" in p for p, _ in problems)
    problems.clear()
    monkeypatch.delenv("GEMMA_TEST_KEY", raising=False)
    _backend(problems, Settings().merged({"backend": "https://192.0.2.7/v1", "apiKeyEnv": "GEMMA_TEST_KEY"}))
    assert any("GEMMA_TEST_KEY" in p and "not set" in p for p, _ in problems)
