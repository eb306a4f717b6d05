"""The token-healing rule over the `openai` backend, where the server's own choices decide.

A scripted stdlib HTTP server stands in for llama.cpp here, and says so: what the test pins
is a near-tie llama.cpp hit cold (its first token 23 of a line's 24 spaces, then its end of
text), which no real server can be made to repeat on demand. The real llama.cpp server runs
the same path in tests/test_backend_llama_server.py. The tokenizer and the healing
constraint are the real ones (Qwen2.5-Coder's, our Prompter)."""

from __future__ import annotations

import http.server
import json
import threading

from gemma_lsp.backends.http import Http
from gemma_lsp.backends.openai import OpenAIBackend
from gemma_lsp.engine import GenerateRequest
from gemma_lsp.complete.prompt import Prompter


def _scripted(answers: list[str]):
    """A /v1/completions that streams answers[i] (as text, one chunk) to the i-th request and
    ends the stream, as a server does at its end-of-text token; every request body is kept."""
    bodies: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            bodies.append(body)
            text = answers[min(len(bodies), len(answers)) - 1]
            events = [{"choices": [{"text": text, "index": 0}]}] if text else []
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            data = payload.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, bodies


def test_a_server_that_stops_before_the_healed_text_is_spelled_is_asked_again(tiny_qwen_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_qwen_dir)
    prompter = Prompter(tok)
    healed = " " * 8  # the indentation token healing took off the prompt's end
    partial, rest = " " * 7, " "
    # 1st: seven of the eight spaces, then the end of the stream; 2nd (biased, one token):
    # the eighth; 3rd: the line.
    server, bodies = _scripted([partial, rest + "return a + b\n", "return a + b\n"])
    try:
        backend = OpenAIBackend(Http(f"http://127.0.0.1:{server.server_port}/v1"), tok, model="m")
        backend._ready = True  # no /models or tokenize endpoint on this scripted server
        prompt = tok.encode("def add(a, b):\n", add_special_tokens=False)
        req = GenerateRequest(prompt=prompt, max_tokens=16, constraint=prompter.heal_constraint(healed))
        res = backend.generate(req)
    finally:
        server.shutdown()
    text = tok.decode(res.tokens)
    assert text.startswith(healed), repr(text)  # before the fix: "       " (7 spaces), an empty answer
    assert "logit_bias" in bodies[1] and bodies[1]["max_tokens"] == 1
    allowed = {int(i) for i in bodies[1]["logit_bias"]}
    assert tok.encode(" ", add_special_tokens=False)[0] in allowed
