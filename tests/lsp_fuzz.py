"""Protocol fuzzing over the real wire: generated messages, reproducible from a seed.

    python tests/lsp_fuzz.py --messages 10000 --seed 1 [--tcp] [--json out.json]

Each run starts `gemma-lsp serve` (a tiny random-weight Qwen2 with the real tokenizer, so a
completion costs milliseconds) once per negotiated position encoding (utf-8, utf-16,
utf-32; `--tcp` adds one over loopback TCP) and sends it a stream drawn from
`random.Random(seed)`: the same seed gives the same bytes. The stream mixes

  - well-formed requests and notifications of every method the server handles;
  - the same with one field anywhere replaced by a value of another type, deleted, or
    joined by an unknown field; unknown methods; duplicate ids; ids of the wrong type;
    notifications that carry an id; `$/cancelRequest` for unknown and for live ids;
  - positions past the end of a line and of the document, inside a surrogate pair (in
    UTF-16 units) or a UTF-8 sequence, on either side of a CRLF, negative ones;
  - malformed JSON, truncated bodies, bodies that are not UTF-8, JSON arrays and scalars,
    deep nesting, a `Content-Length` too short (the rest of the body becomes garbage) or
    too long (padded with blanks), header blocks with garbage lines, and a 20 MB document;
  - a shutdown at the end, requests after it, then exit.

The oracle: every request the server can identify gets exactly one answer, every message
whose id cannot be read gets at most one `id: null` error, the server answers a last
request, exits cleanly on `exit`, and its memory stays bounded (RSS sampled throughout).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from wire import Wire, encode, frame, rss_kib  # noqa: E402

ENCODINGS = ("utf-8", "utf-16", "utf-32")
URIS = [f"file:///fuzz/doc{i}.py" for i in range(8)] + ["file:///fuzz/%E4%B8%AD%20x.py", "untitled:Untitled-1"]
OPTIONS = {"maxTokens": 3, "dtype": "float32", "timeBudgetMs": 2000}
TEXT_BITS = ["def f(x):\n", "    return x\r\n", "😀中", "\x0c", "\u2028", "\r", "\n", "é", "𝄞", "\t", "x = 1", "  ",
             "class A:\n    pass\n", "\ufeff", "\x00", "'''doc'''"]
BIG = 20 * 1024 * 1024
# Memory is bounded when the peak stays within this of the RSS after the first completion:
# the first requests of each kind load one-off things (~350 MiB here: the healing table, the
# retrieval index), then RSS is flat (measured: +8 MiB over 2,200 messages after the first 800).
BOUND_KIB = 512 * 1024


def _text(rng: random.Random, n: int | None = None) -> str:
    return "".join(rng.choice(TEXT_BITS) for _ in range(n if n is not None else rng.randint(0, 30)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value of a random type: what a confused client puts in a field."""
    kind = rng.randrange(11 if depth < 3 else 8)
    if kind == 8:
        return [_value(rng, depth + 1)]
    if kind == 9:
        return {"x": _value(rng, depth + 1)}
    return [None, True, 0, -1, 2**63, 1.5, "", _text(rng, 3), None, None, {"line": "a", "character": None}][kind]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(rng: random.Random, msg: dict) -> dict:
    """One field replaced, deleted, or joined by an unknown one (anywhere but the id)."""
    msg = json.loads(json.dumps(msg))
    paths = [p for p in _paths(msg) if p[0] not in ("id", "jsonrpc")]
    if not paths:
        return msg
    path = rng.choice(paths)
    parent = msg
    for k in path[:-1]:
        parent = parent[k]
    op = rng.randrange(3)
    if op == 0:
        parent[path[-1]] = _value(rng)
    elif op == 1 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent["unknown" + rng.choice(string.ascii_letters)] = _value(rng)
    return msg


@dataclass
class Plan:
    """What the fuzzer expects back."""

    answers: Counter = field(default_factory=Counter)  # json.dumps(id) -> how many answers
    null_errors: int = 0  # messages whose id cannot be read: at most one `id: null` error each
    either: list = field(default_factory=list)  # ids of broken requests: one answer with the id, or an id-null error
    sent: int = 0
    kinds: Counter = field(default_factory=Counter)


class Fuzzer:
    def __init__(self, wire: Wire, rng: random.Random, encoding: str) -> None:
        self.w, self.rng, self.encoding = wire, rng, encoding
        self.plan = Plan()
        self.docs: dict[str, str] = {}
        self.live: list[Any] = []  # ids of requests sent recently (cancel and duplicate targets)
        self._n = 0

    # --- building blocks ----------------------------------------------------------------

    def _id(self) -> Any:
        self._n += 1
        return self._n if self.rng.random() < 0.7 else f"s-{self._n}-{self.rng.choice(['é', '😀', ''])}"

    def _position(self, uri: str) -> dict:
        text = self.docs.get(uri, "")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        line = self.rng.choice([0, len(lines) - 1, len(lines), len(lines) + 50, self.rng.randrange(len(lines))])
        length = len(lines[line]) if line < len(lines) else 0
        ch = self.rng.choice([0, length, length + 1, length + 1000, self.rng.randint(0, length * 2 + 1)])
        if self.rng.random() < 0.03:
            line, ch = self.rng.choice([(-1, 0), (0, -1), (2**31, 0)])
        return {"line": line, "character": ch}

    def _doc_id(self, uri: str) -> dict:
        return {"uri": uri}

    def _request(self, method: str, params: Any) -> dict:
        return {"jsonrpc": "2.0", "id": self._id(), "method": method, "params": params}

    def _notification(self, method: str, params: Any) -> dict:
        return {"jsonrpc": "2.0", "method": method, "params": params}

    def well_formed(self) -> dict:
        rng = self.rng
        uri = rng.choice(URIS)
        kind = rng.choices(["open", "change", "close", "cursor", "inline", "completion", "stats", "document",
                            "cancel", "config"], [8, 25, 4, 5, 14, 8, 3, 3, 5, 2])[0]
        if kind == "open":
            text = _text(rng)
            self.docs[uri] = text
            return self._notification("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": rng.choice(["python", "rust", "plaintext", ""]), "version": 1, "text": text}})
        if kind == "change":
            start, end = self._position(uri), self._position(uri)
            change: dict = {"range": {"start": start, "end": end}, "text": _text(rng, rng.randint(0, 4))}
            if rng.random() < 0.1:
                change = {"text": _text(rng)}  # a full replacement
            return self._notification("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                                                 "contentChanges": [change]})
        if kind == "close":
            self.docs.pop(uri, None)
            return self._notification("textDocument/didClose", {"textDocument": self._doc_id(uri)})
        if kind == "cursor":
            return self._notification("gemma/cursor", {"textDocument": self._doc_id(uri), "position": self._position(uri)})
        if kind == "inline":
            return self._request("textDocument/inlineCompletion", {"textDocument": self._doc_id(uri),
                                 "position": self._position(uri), "context": {"triggerKind": rng.choice([1, 2])}})
        if kind == "completion":
            return self._request("textDocument/completion", {"textDocument": self._doc_id(uri),
                                 "position": self._position(uri)})
        if kind == "stats":
            return self._request("gemma/stats", None)
        if kind == "document":
            return self._request("gemma/document", {"textDocument": self._doc_id(uri)})
        if kind == "cancel":
            target = rng.choice(self.live) if self.live and rng.random() < 0.7 else rng.choice([10**9, "nope", -5])
            return self._notification("$/cancelRequest", {"id": target})
        settings = {"gemmaLsp": {rng.choice(["maxTokens", "singleLine", "timeBudgetMs", "drafter", "nonsense"]):
                                 _value(rng)}}
        return self._notification("workspace/didChangeConfiguration", {"settings": settings})

    # --- sending, with the expectation ----------------------------------------------------

    def _expect(self, msg: dict) -> None:
        if "id" in msg and "method" in msg:
            rid = msg["id"]
            if rid is None or isinstance(rid, bool) or not isinstance(rid, (int, float, str)):
                self.plan.null_errors += 1
            else:
                self.plan.answers[json.dumps(rid)] += 1
                self.live = (self.live + [rid])[-20:]

    def send_message(self, msg: Any, kind: str) -> None:
        if isinstance(msg, dict):
            self._expect(msg)
        self.w.send(msg)
        self.plan.kinds[kind] += 1
        self.plan.sent += 1

    def send_broken(self, data: bytes, kind: str, null_errors: int = 0, answers: list[Any] = (),
                    either: Any = None) -> None:
        self.w.send_bytes(data)
        self.plan.null_errors += null_errors
        if either is not None:
            self.plan.either.append(json.dumps(either))
        for rid in answers:
            self.plan.answers[json.dumps(rid)] += 1
        self.plan.kinds[kind] += 1
        self.plan.sent += 1

    def one(self) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.45:
            self.send_message(self.well_formed(), "well-formed")
        elif r < 0.70:
            self.send_message(_mutate(rng, self.well_formed()), "mutated field")
        elif r < 0.73:
            self.send_message(self._request(rng.choice(["foo/bar", "textDocument/hover", "$/unknown"]), {}), "unknown method")
        elif r < 0.75:
            self.send_message(self._notification("zzz/unknown", {"a": 1}), "unknown notification")
        elif r < 0.78 and self.live:
            rid = rng.choice(self.live)
            msg = self.well_formed()
            if "id" in msg:
                msg["id"] = rid
            self.send_message(msg, "duplicate id")
        elif r < 0.80:
            msg = self._request("gemma/stats", None)
            msg["id"] = rng.choice([{"a": 1}, [1], True, None])
            self.send_message(msg, "bad id type")
        elif r < 0.83:
            msg = self.well_formed()
            kind = "request" if "id" in msg else "notification with an id"
            msg.setdefault("id", self._id())
            self.send_message(msg, kind)
        elif r < 0.86:
            msg = self._request("gemma/stats", None)
            body = json.dumps(msg).encode()
            cut = rng.randrange(1, len(body))
            self.send_broken(frame(body[:cut]) + b"\r\n", "truncated JSON", either=msg["id"])
        elif r < 0.88:
            msg = self._request("gemma/stats", {"x": "\x00"})
            body = json.dumps(msg).encode().replace(b"\\u0000", b"\xff\xfe")
            self.send_broken(frame(body), "invalid UTF-8", answers=[msg["id"]])
        elif r < 0.90:
            self.send_broken(frame(rng.choice([b"[]", b"[1,2]", b"5", b'"x"', b"null", b"{}"])), "not an object",
                             null_errors=1)
        elif r < 0.91:
            depth = rng.choice([100, 5000, 100000])
            self.send_broken(frame(b"[" * depth + b"]" * depth), "deep nesting", null_errors=1)
        elif r < 0.93:  # Content-Length too short: a parse error, then garbage until the next header
            msg = self._request("gemma/stats", None)
            body = json.dumps(msg).encode()
            cut = rng.randrange(1, len(body) - 1)
            self.send_broken(b"Content-Length: %d\r\n\r\n" % cut + body + b"\r\n", "length too short",
                             either=msg["id"])
        elif r < 0.95:  # Content-Length too long, padded with blanks: still one good message
            msg = self._request("gemma/stats", None)
            body = json.dumps(msg).encode()
            pad = rng.randint(1, 40)
            self.send_broken(b"Content-Length: %d\r\n\r\n" % (len(body) + pad) + body + b" " * pad, "length too long",
                             answers=[msg["id"]])
        elif r < 0.97:  # garbage lines before a good message
            msg = self._request("gemma/stats", None)
            junk = rng.choice([b"garbage\r\n", b"Content-Type: x\r\n", b"\r\n\r\n", b"X: y\r\nContent-Length: zz\r\n\r\n",
                               b"a" * 20000 + b"\r\n"])
            self.send_broken(junk + encode(msg), "garbage headers", answers=[msg["id"]])
        else:
            uri = rng.choice(URIS)
            msg = self._request("textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                                "position": self._position(uri), "context": {"triggerKind": 2}})
            self.send_message(msg, "request")

    def big_document(self) -> None:
        uri = "file:///fuzz/big.py"
        line = "value = compute(alpha, beta)  # a line of a big generated file\n"
        text = line * (BIG // len(line))
        self.docs[uri] = text
        self.send_message(self._notification("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": text}}), "20 MB document")
        self.send_message(self._request("textDocument/inlineCompletion", {"textDocument": {"uri": uri},
                          "position": {"line": 1000, "character": 8}, "context": {"triggerKind": 1}}), "request")
        self.send_message(self._notification("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                          "contentChanges": [{"range": {"start": {"line": 5, "character": 0},
                                                        "end": {"line": 5, "character": 0}}, "text": "x"}]}), "edit in 20 MB")
        self.send_message(self._notification("textDocument/didClose", {"textDocument": {"uri": uri}}), "well-formed")


def fuzz_one(args: argparse.Namespace, model_dir: Path, encoding: str, messages: int, seed: int, tcp: bool,
             stderr: Path | None = None) -> dict:
    """One server, `messages` generated messages; the figures and every broken expectation."""
    rng = random.Random(f"{seed}-{encoding}-{tcp}")
    with Wire(tcp=tcp, stderr=stderr) as w:
        init = w.initialize({"model": str(model_dir), **OPTIONS}, encodings=[encoding])
        negotiated = init["result"]["capabilities"].get("positionEncoding")
        fz = Fuzzer(w, rng, negotiated or "utf-16")
        # one completion first: the model is loaded, memory from here on is the server's own
        w.notify("textDocument/didOpen", {"textDocument": {"uri": URIS[0], "languageId": "python", "version": 1,
                                                           "text": "def f(x):\n    return "}})
        first = w.request("textDocument/inlineCompletion", {"textDocument": {"uri": URIS[0]}, "context": {"triggerKind": 1},
                                                            "position": {"line": 1, "character": 11}}, timeout=300)
        assert "result" in first, first
        fz.docs[URIS[0]] = "def f(x):\n    return "
        base = rss_kib(w.pid)
        samples = [(0, base)]
        t0 = time.perf_counter()
        big_at = messages // 2 if args.big else -1
        for i in range(messages):
            if i == big_at:
                fz.big_document()
            fz.one()
            if i % args.drain == args.drain - 1:  # let answers drain now and then, as a real client's pace would
                w.request("gemma/stats", timeout=120)
                samples.append((i + 1, rss_kib(w.pid)))
        last = w.request("gemma/stats", timeout=300)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(len(w.answers(json.loads(k))) < n for k, n in fz.plan.answers.items()):
            time.sleep(0.2)
        samples.append((messages, rss_kib(w.pid)))
        # shutdown, a request after it, exit: the exit code says it was orderly
        w.send({"jsonrpc": "2.0", "id": "bye", "method": "shutdown"})
        w.wait("bye", 60)
        w.send({"jsonrpc": "2.0", "id": "late", "method": "gemma/stats"})
        late = w.wait("late", 30)
        w.notify("exit")
        try:
            rc = w.proc.wait(30)
        except Exception:
            rc = None
        elapsed = time.perf_counter() - t0
        problems = []
        for key, n in fz.plan.answers.items():
            got = len(w.responses.get(key, []))
            if got != n:
                problems.append(f"id {key}: {got} answers, expected {n}")
        either = set(fz.plan.either)
        for key in either:
            if len(w.responses.get(key, [])) > 1:
                problems.append(f"id {key}: {len(w.responses[key])} answers to one broken request")
        unread = fz.plan.null_errors + sum(1 for k in either if not w.responses.get(k))
        stray = [k for k in w.responses if k not in fz.plan.answers and k not in either and k != "null"
                 and not k.startswith('"h') and k not in ('"bye"', '"late"')]
        if stray:
            problems.append(f"answers to ids never sent: {sorted(stray)[:5]}")
        nulls = len(w.responses.get("null", []))
        if nulls > unread:
            problems.append(f"{nulls} id-null errors for {unread} unreadable messages")
        if "error" not in late or late["error"]["code"] != -32600:
            problems.append(f"a request after shutdown got {late}")
        if rc != 0:
            problems.append(f"exit code {rc} after shutdown + exit")
        peak = max(r for _, r in samples)
        if peak - base > BOUND_KIB:
            problems.append(f"RSS grew {(peak - base) // 1024} MiB (bound {BOUND_KIB // 1024} MiB)")
        if w.bad_frames:
            problems.append(f"the server wrote bad frames: {w.bad_frames[:3]}")
        return {"encoding": negotiated, "transport": "tcp" if tcp else "stdio", "messages": fz.plan.sent,
                "requests": sum(fz.plan.answers.values()), "answered": sum(min(len(w.responses.get(k, [])), n)
                                                                            for k, n in fz.plan.answers.items()),
                "null_errors": nulls, "unreadable": unread,
                "null_reasons": dict(Counter((m.get("error") or {"message": "a result"})["message"].split(" (")[0] for m in w.responses.get("null", []))), "kinds": dict(fz.plan.kinds),
                "completions": last["result"]["completions"], "rss_kib": samples, "rss_base_kib": base,
                "rss_peak_kib": max(r for _, r in samples), "rss_final_kib": samples[-1][1],
                "seconds": round(elapsed, 1), "exit_code": rc, "problems": problems}


def run(args: argparse.Namespace, model_dir: Path) -> list[dict]:
    per = max(1, args.messages // (len(ENCODINGS) + int(args.tcp)))
    out = [fuzz_one(args, model_dir, enc, per, args.seed, False) for enc in ENCODINGS]
    if args.tcp:
        out.append(fuzz_one(args, model_dir, "utf-16", per, args.seed, True))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tcp", action="store_true", help="also fuzz one server over loopback TCP")
    p.add_argument("--no-big", dest="big", action="store_false", help="skip the 20 MB document")
    p.add_argument("--model", type=Path, help="model directory (default: a tiny random Qwen2 made here)")
    p.add_argument("--json", type=Path)
    p.add_argument("--drain", type=int, default=200, help="wait for the answers every N messages (and sample RSS)")
    args = p.parse_args(argv)
    model_dir = args.model or make_tiny_model(Path("/tmp/gemma-lsp-fuzz-model"))
    results = run(args, model_dir)
    for r in results:
        print(f"{r['transport']:5} {r['encoding']:6}: {r['messages']} messages, {r['requests']} requests, "
              f"{r['answered']} answered, {r['null_errors']} id-null errors for {r['unreadable']} unreadable, "
              f"RSS {r['rss_base_kib'] // 1024} -> peak {r['rss_peak_kib'] // 1024} -> {r['rss_final_kib'] // 1024} MiB, "
              f"{r['seconds']} s, exit {r['exit_code']}; problems: {r['problems'] or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["problems"] for r in results) else 0


def make_tiny_model(out: Path) -> Path:
    """The tests' tiny Qwen2 (see conftest.tiny_qwen_dir), for running this file by hand."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from gemma_lsp.models.default import prepared_dir

    tok = AutoTokenizer.from_pretrained(prepared_dir())
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=False, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


if __name__ == "__main__":
    sys.exit(main())
