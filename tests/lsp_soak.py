"""A long session in one server process: edits, pastes, undo, completions, cancels.

    python tests/lsp_soak.py --changes 10000 --requests 1000 --seed 1 [--plot docs/img/soak_rss.png]

One `gemma-lsp serve` (a tiny random Qwen2 with the real tokenizer; utf-16 positions, text
with emoji and CJK so that UTF-16 units differ from characters and CRLF lines) gets
`--changes` didChange notifications across 12 open files: typing, pastes of 1-5 KB,
deletions, undo (the inverse of an earlier edit), whole-document replacements, sometimes
several changes in one notification. Between them come `--requests` completion requests:
a third awaited, a third cancelled with `$/cancelRequest`, a third superseded by the next
one at once. The client keeps its own copy of every document, edited by offsets with its
own position arithmetic (not the server's text.py).

At the end: every document's text on the server (`gemma/document`) equals the client's,
every request got exactly one answer, the KV cache never held more than `cacheMb`, and
RSS stopped growing (the last third of the run adds at most GROWTH_MIB over the middle).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from wire import Wire, rss_kib  # noqa: E402

FILES = 12
GROWTH_MIB = 48
OPTIONS = {"maxTokens": 4, "dtype": "float32", "timeBudgetMs": 2000, "cacheMb": 4}
LINES = ["def compute(alpha, beta):\n", "    return alpha + beta  # 合計\n", "class Widget:\r\n", "    name = '😀 x'\n",
         "    for i in range(10):\n", "        total += i\n", "import os\n", "\n", "    if value is None:\n",
         "        raise ValueError('no 𝄞 value')\n", "x = [1, 2, 3]\n"]
TYPED = list("abcdefghij (),:=+_.") + ["😀", "中", "\n", "    ", "\r\n"]
_BREAK = re.compile(r"\r\n|\r|\n")


def utf16_position(text: str, offset: int) -> dict:
    """LSP position of a character offset, computed on its own (lines end at CRLF, CR, LF)."""
    head = text[:offset]
    starts = [0] + [m.end() for m in _BREAK.finditer(head)]
    line_start = starts[-1]
    return {"line": len(starts) - 1, "character": len(text[line_start:offset].encode("utf-16-le")) // 2}


def _boundary(text: str, offset: int) -> int:
    """Never between the two characters of a CRLF (a position cannot say that)."""
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        return offset - 1
    return offset


def _code(rng: random.Random, lines: int) -> str:
    return "".join(rng.choice(LINES) for _ in range(lines))


class Session:
    def __init__(self, w: Wire, rng: random.Random) -> None:
        self.w, self.rng = w, rng
        self.docs: dict[str, str] = {}
        self.undo: dict[str, list[tuple[int, int, str]]] = {}
        self.versions: dict[str, int] = {}
        self.requests: list = []  # every id sent
        self.cancelled = self.superseded = self.awaited = 0
        self.max_cache = 0
        self.cache_limit = 0

    def open_all(self) -> None:
        for i in range(FILES):
            uri = f"file:///soak/module_{i}.py"
            text = _code(self.rng, self.rng.randint(20, 120))
            self.docs[uri], self.undo[uri], self.versions[uri] = text, [], 1
            self.w.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python",
                                                                    "version": 1, "text": text}})

    def _edit(self, uri: str) -> tuple[int, int, str]:
        """(start, end, new text) in character offsets of the current text."""
        rng, text = self.rng, self.docs[uri]
        kind = rng.choices(["type", "paste", "delete", "undo", "replace"], [60, 8, 20, 10, 2])[0]
        if kind == "undo" and self.undo[uri]:
            return self.undo[uri].pop()
        if kind == "replace":
            return 0, len(text), _code(rng, rng.randint(10, 80))
        a = _boundary(text, rng.randint(0, len(text)))
        if kind == "paste":
            return a, a, _code(rng, rng.randint(20, 100))
        if kind == "delete":
            b = _boundary(text, min(len(text), a + rng.randint(1, 200)))
            return a, max(a, b), ""
        return a, a, rng.choice(TYPED)

    def change(self) -> None:
        uri = self.rng.choice(list(self.docs))
        changes = []
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            text = self.docs[uri]
            a, b, new = self._edit(uri)  # an undo's offsets may be stale: clamp them
            a, b = _boundary(text, min(a, len(text))), _boundary(text, min(b, len(text)))
            b = max(a, b)
            changes.append({"range": {"start": utf16_position(text, a), "end": utf16_position(text, b)}, "text": new})
            self.docs[uri] = text[:a] + new + text[b:]
            self.undo[uri] = (self.undo[uri] + [(a, a + len(new), text[a:b])])[-50:]
        self.versions[uri] += 1
        self.w.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": self.versions[uri]},
                                                 "contentChanges": changes})

    def complete(self) -> None:
        uri = self.rng.choice(list(self.docs))
        text = self.docs[uri]
        pos = utf16_position(text, _boundary(text, self.rng.randint(0, len(text))))
        rid = self.w.new_id()
        self.requests.append(rid)
        self.w.send({"jsonrpc": "2.0", "id": rid, "method": "textDocument/inlineCompletion",
                     "params": {"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": 2}}})
        how = self.rng.randrange(3)
        if how == 0:
            self.awaited += 1
            self.w.wait(rid, 120)
        elif how == 1:
            self.cancelled += 1
            self.w.notify("$/cancelRequest", {"id": rid})
        else:
            self.superseded += 1  # the next request (or the next stats) comes at once

    def sample_cache(self) -> dict:
        stats = self.w.request("gemma/stats", timeout=120)["result"]
        self.max_cache = max(self.max_cache, stats["cache_bytes"])
        self.cache_limit = stats["cache_limit_bytes"]
        return stats


def soak(model_dir: Path, changes: int, requests: int, seed: int) -> dict:
    rng = random.Random(seed)
    with Wire() as w:
        w.initialize({"model": str(model_dir), **OPTIONS}, encodings=["utf-16"])
        s = Session(w, rng)
        s.open_all()
        every = max(1, changes // requests)
        t0 = time.perf_counter()
        samples: list[tuple[float, int, int]] = []  # (seconds, changes so far, RSS KiB)
        for i in range(changes):
            s.change()
            if i % every == every - 1 and len(s.requests) < requests:
                s.complete()
            if i % 250 == 249:
                s.sample_cache()
                samples.append((round(time.perf_counter() - t0, 2), i + 1, rss_kib(w.pid)))
        stats = s.sample_cache()
        unanswered = []
        for rid in s.requests:
            try:
                w.wait(rid, 60)
            except TimeoutError:
                unanswered.append(rid)
        twice = [rid for rid in s.requests if len(w.answers(rid)) > 1]
        mismatched = []
        for uri, text in s.docs.items():
            got = w.request("gemma/document", {"textDocument": {"uri": uri}})["result"]["text"]
            if got != text:
                mismatched.append(uri)
        samples.append((round(time.perf_counter() - t0, 2), changes, rss_kib(w.pid)))
        rc = w.close()
    third = max(1, len(samples) // 3)
    middle = max(r for _, _, r in samples[third:2 * third]) if len(samples) >= 3 else samples[0][2]
    last = max(r for _, _, r in samples[2 * third:])
    problems = []
    if unanswered:
        problems.append(f"{len(unanswered)} requests unanswered")
    if twice:
        problems.append(f"{len(twice)} requests answered twice")
    if mismatched:
        problems.append(f"{len(mismatched)} documents differ from the client's copy: {mismatched[:3]}")
    if s.max_cache > s.cache_limit:
        problems.append(f"KV cache held {s.max_cache} bytes, over its limit {s.cache_limit}")
    if (last - middle) / 1024 > GROWTH_MIB:
        problems.append(f"RSS still growing: +{(last - middle) // 1024} MiB over the last third")
    if rc != 0:
        problems.append(f"exit code {rc}")
    return {"changes": changes, "requests": len(s.requests), "awaited": s.awaited, "cancelled": s.cancelled,
            "superseded": s.superseded, "completions": stats["completions"], "files": FILES,
            "chars": sum(len(t) for t in s.docs.values()), "cache_max_bytes": s.max_cache,
            "cache_limit_bytes": s.cache_limit, "rss": samples, "rss_peak_mib": max(r for *_, r in samples) // 1024,
            "rss_final_mib": samples[-1][2] // 1024, "seconds": round(time.perf_counter() - t0, 1),
            "exit_code": rc, "problems": problems}


def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [c for _, c, _ in result["rss"]]
    ys = [r / 1024 for *_, r in result["rss"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(xs, ys, marker=".")
    ax.set_xlabel("didChange notifications")
    ax.set_ylabel("server RSS (MiB)")
    ax.set_ylim(0, max(ys) * 1.15)
    ax.set_title(f"soak: {result['changes']} changes, {result['requests']} completion requests, {result['files']} files")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=10000)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    from lsp_fuzz import make_tiny_model

    r = soak(args.model or make_tiny_model(Path("/tmp/gemma-lsp-fuzz-model")), args.changes, args.requests, args.seed)
    print(f"{r['changes']} changes, {r['requests']} requests ({r['awaited']} awaited, {r['cancelled']} cancelled, "
          f"{r['superseded']} superseded), {r['completions']} completions run, KV cache max {r['cache_max_bytes']} "
          f"of {r['cache_limit_bytes']} bytes, RSS peak {r['rss_peak_mib']} MiB, final {r['rss_final_mib']} MiB, "
          f"{r['seconds']} s, exit {r['exit_code']}; problems: {r['problems'] or 'none'}")
    if args.plot:
        plot(r, args.plot)
    if args.json:
        args.json.write_text(json.dumps(r, indent=1))
    return 1 if r["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
