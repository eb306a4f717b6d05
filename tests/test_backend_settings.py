"""Backend settings and the client's security rules, without a model.

The API-key test answers from a stdlib HTTP server in this process: what is checked is
what the client sends (the header from the named variable, never the key in settings)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from gemma_lsp.backends.http import Http
from gemma_lsp.backends.openai import api_headers
from gemma_lsp.config import Settings
from gemma_lsp.errors import BackendError, GemmaLspError


@pytest.mark.parametrize("value, want", [("inprocess", "inprocess"), ("local", "local"),
                                         ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
                                         ("https://gpu.example/v1", "https://gpu.example/v1")])
def test_backend_values(value, want):
    s = Settings().merged({"backend": value})
    assert s.backend == want
    assert s.engine_key() != Settings().engine_key() or want == "inprocess"


@pytest.mark.parametrize("obj, message", [({"backend": "ftp://x"}, "backend must be"), ({"backend": 3}, "backend must be"),
                                          ({"apiKeyEnv": "sk-abc def"}, "apiKeyEnv must name"),
                                          ({"backendModel": 5}, "backendModel must be")])
def test_bad_backend_settings_are_clear(obj, message):
    with pytest.raises(GemmaLspError, match=message):
        Settings().merged(obj)


def test_the_api_key_comes_from_the_named_variable(monkeypatch):
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("GEMMA_TEST_API_KEY", "sk-secret-123")
        Http(f"http://127.0.0.1:{server.server_port}/v1", api_headers("GEMMA_TEST_API_KEY")).get("/models")
        assert seen == ["Bearer sk-secret-123"]
        assert "sk-secret" not in repr(Settings().merged({"apiKeyEnv": "GEMMA_TEST_API_KEY"}))
        monkeypatch.delenv("GEMMA_TEST_API_KEY")
        with pytest.raises(BackendError, match="GEMMA_TEST_API_KEY.*not set"):
            api_headers("GEMMA_TEST_API_KEY")
    finally:
        server.shutdown()


def test_tls_is_verified(tmp_path):
    """A server whose certificate no CA signed is refused, with the reason."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not found to make a self-signed certificate")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BackendError, match="certificate"):
            Http(f"https://127.0.0.1:{server.server_port}/v1").get("/models")
    finally:
        server.shutdown()
