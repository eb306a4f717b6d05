"""`gemma-lsp bench typing`: replay typing a file over the REAL LSP over stdio.

The benchmark starts ``python -m gemma_lsp serve`` as a subprocess and drives it
with pygls' ``LanguageClient``, exactly as an editor would:

  1. initialize (utf-16 positions, inline completion), then one untimed warm-up
     completion in another document, which waits for the model to load;
  2. ``didOpen`` the document with the text before the typed part, and one
     ``inlineCompletion`` at the cursor (reported as ``open``: a cold prompt);
  3. for each keystroke: ``didChange`` (incremental: an insertion at the cursor),
     then ``inlineCompletion`` at the new cursor. By default each answer is
     awaited before the next keystroke. With ``--cps X`` keystrokes come at X
     characters per second whether answered or not, so the server supersedes the
     older requests (they are answered empty and counted as cancelled).

A newline and the indentation that follows it are sent as one change, as an
editor's auto-indent does; every other character is its own keystroke.

Default document: a HumanEval problem (``--problem``, default HumanEval/0): the
prompt is in the editor, followed by the first line's indentation (auto-indent), and
its canonical solution is typed from there. With ``FILE``, typing starts at ``--start-line`` (default: the middle of
the file); the rest of the file stays in the document only with ``--keep-suffix``.

Figures: keystroke -> response latency measured by the client (p50, p95, max),
the share of prompt tokens served from the KV prefix cache (``gemma/stats``:
reused_tokens / prompt_tokens over the keystrokes), typed-through hits (answers
served from the previous suggestion without running the model), completions,
cancelled, and how often the suggestion shown predicted the next keystroke.
The goals (p50 <= 0.8 s, p95 <= 2 s, reuse >= 90%) are printed beside the figures;
nothing is asserted.

Example: ``gemma-lsp bench typing --chars 40`` or
``gemma-lsp bench typing src/app.py --start-line 120 --chars 200 --cps 8 --json t.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

GOALS = {"p50_s": 0.8, "p95_s": 2.0, "reuse": 0.90}
UTF16 = "utf-16"
_IO_TIMEOUT_S = 600.0  # a single answer never takes this long; a hung server must not hang the bench


@dataclass
class Script:
    """What to type: the document as opened, the keystrokes, the text after the cursor."""

    name: str
    before: str
    keystrokes: list[str]
    after: str = ""
    language: str = "python"


@dataclass
class Keystroke:
    index: int
    typed: str
    latency_ms: float | None  # None: never answered (should not happen)
    shown: str  # the inline suggestion answered ("" = none)
    predicted: bool | None  # did the shown suggestion start with the next keystroke?
    stats: dict[str, int] = field(default_factory=dict)  # gemma/stats delta (await mode only)


def keystrokes_of(text: str, chars: int) -> list[str]:
    """Split `text` into keystrokes (newline + following indentation is one) of at most `chars` characters."""
    out: list[str] = []
    n, i = 0, 0
    while i < len(text) and n < chars:
        if text[i] == "\n":
            j = i + 1
            while j < len(text) and text[j] in " \t":
                j += 1
            k = text[i:j][: chars - n]
        else:
            k = text[i]
        out.append(k)
        n += len(k)
        i += len(k)
    return out


def make_script(args: argparse.Namespace) -> Script:
    if args.file:
        path = Path(args.file)
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)
        start_line = args.start_line if args.start_line is not None else max(1, len(lines) // 2)
        start = sum(len(x) for x in lines[: max(0, start_line - 1)])
        keys = keystrokes_of(text[start:], args.chars)
        end = start + sum(len(k) for k in keys)
        from ..cli import _language

        return Script(f"{path}:{start_line}", text[:start], keys, text[end:] if args.keep_suffix else "",
                      _language(path) or "plaintext")
    from . import humaneval

    problems = humaneval.load_problems()
    if args.problem not in problems:
        raise SystemExit(f"gemma-lsp bench typing: unknown problem {args.problem!r}")
    p = problems[args.problem]
    body = p["canonical_solution"]
    indent = body[: len(body) - len(body.lstrip(" \t"))]  # the editor's auto-indent is already there
    return Script(args.problem, p["prompt"] + indent, keystrokes_of(body[len(indent):], args.chars))


def _plain(x: Any) -> Any:
    """pygls' client turns untyped results into namedtuples; make them dicts."""
    if hasattr(x, "_asdict"):
        return {k: _plain(v) for k, v in x._asdict().items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    return {k: int(b[k]) - int(a.get(k, 0)) for k, v in b.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {
        "model": args.model, "draftModel": args.draft_model, "drafter": args.drafter, "maxTokens": args.max_tokens,
        "dtype": args.dtype, "device": args.device, "timeBudgetMs": args.time_budget_ms,
    }
    return {k: v for k, v in opts.items() if v is not None}


async def _bench(args: argparse.Namespace, script: Script) -> dict[str, Any]:
    from lsprotocol import types as lsp
    from pygls.lsp.client import LanguageClient

    from ..text import position_at

    client = LanguageClient("gemma-lsp-bench-typing", "0")
    stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
    log = open(args.server_log, "w", encoding="utf-8") if getattr(args, "server_log", None) else None
    t_start = time.perf_counter()
    await client.start_io(sys.executable, "-m", "gemma_lsp", "serve")
    server = client._server

    async def drain() -> None:  # the server's stderr pipe must never fill up
        assert server is not None and server.stderr is not None
        while line := await server.stderr.readline():
            s = line.decode("utf-8", "replace")
            stderr_tail.append(s)
            if log is not None:
                log.write(s)

    drainer = asyncio.create_task(drain())

    async def call(coro, what: str):
        try:
            return await asyncio.wait_for(coro, _IO_TIMEOUT_S)
        except Exception as e:
            tail = "".join(stderr_tail)[-3000:]
            raise RuntimeError(f"{what} failed: {e!r}\n--- server stderr (tail) ---\n{tail}") from e

    async def stats() -> dict[str, Any]:
        return _plain(await call(client.protocol.send_request_async("gemma/stats", None), "gemma/stats"))

    def inline(uri: str, pos: lsp.Position):
        return client.text_document_inline_completion_async(lsp.InlineCompletionParams(
            context=lsp.InlineCompletionContext(trigger_kind=lsp.InlineCompletionTriggerKind.Automatic),
            text_document=lsp.TextDocumentIdentifier(uri), position=pos))

    def shown(res) -> str:
        return res.items[0].insert_text if res is not None and res.items else ""

    opts = server_options(args)
    caps = lsp.ClientCapabilities(
        general=lsp.GeneralClientCapabilities(position_encodings=[UTF16]),
        text_document=lsp.TextDocumentClientCapabilities(
            synchronization=lsp.TextDocumentSyncClientCapabilities(did_save=False),
            inline_completion=lsp.InlineCompletionClientCapabilities(),
        ),
    )
    result: dict[str, Any] = {}
    try:
        init = await call(client.initialize_async(lsp.InitializeParams(
            capabilities=caps, process_id=os.getpid(), root_uri="file:///bench",
            initialization_options={"gemmaLsp": opts})), "initialize")
        enc = init.capabilities.position_encoding or UTF16
        enc = str(getattr(enc, "value", enc))
        client.initialized(lsp.InitializedParams())

        # Warm-up in another document: waits for the model load, warms kernels.
        t0 = time.perf_counter()
        warm_uri = "file:///bench/warmup.py"
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(warm_uri, "python", 1, "def add(a, b):\n    ")))
        await call(inline(warm_uri, lsp.Position(1, 4)), "warm-up completion")
        ready_s = time.perf_counter() - t_start
        warm_ms = (time.perf_counter() - t0) * 1e3

        uri = "file:///bench/" + ("typed_" + Path(script.name.split(":")[0]).name.replace("/", "_"))
        if not uri.endswith(".py") and script.language == "python":
            uri += ".py"
        text = script.before + script.after
        cursor = len(script.before)
        version = 1
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri, script.language, version, text)))
        s0 = await stats()
        t0 = time.perf_counter()
        first = await call(inline(uri, lsp.Position(*position_at(text, cursor, enc))), "first completion")
        open_ms = (time.perf_counter() - t0) * 1e3
        s1 = await stats()
        open_stats = _delta(s0, s1)

        keys: list[Keystroke] = []
        pending: list[tuple[int, float, asyncio.Future]] = []
        prev_shown = shown(first)
        t_typing = time.perf_counter()
        for i, k in enumerate(script.keystrokes):
            line, col = position_at(text, cursor, enc)
            predicted = prev_shown.startswith(k) if prev_shown else False
            if args.cps:
                target = t_typing + sum(len(x) for x in script.keystrokes[:i]) / args.cps
                if (wait := target - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            sb = await stats() if not args.cps else None
            t0 = time.perf_counter()
            version += 1
            client.text_document_did_change(lsp.DidChangeTextDocumentParams(
                lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
                [lsp.TextDocumentContentChangePartial(range=lsp.Range(lsp.Position(line, col), lsp.Position(line, col)),
                                                      text=k)]))
            text = text[:cursor] + k + text[cursor:]
            cursor += len(k)
            fut = asyncio.ensure_future(inline(uri, lsp.Position(*position_at(text, cursor, enc))))
            if args.cps:
                ks = Keystroke(i, k, None, "", predicted)
                keys.append(ks)

                def done(f: asyncio.Future, ks: Keystroke = ks, t0: float = t0) -> None:
                    ks.latency_ms = (time.perf_counter() - t0) * 1e3
                    if not f.cancelled() and f.exception() is None:
                        ks.shown = shown(f.result())

                fut.add_done_callback(done)
                pending.append((i, t0, fut))
                prev_shown = ""  # a fast typist does not wait to see it
            else:
                res = await call(fut, f"completion after keystroke {i + 1}")
                lat = (time.perf_counter() - t0) * 1e3
                sa = await stats()
                prev_shown = shown(res)
                keys.append(Keystroke(i, k, lat, prev_shown, predicted, _delta(sb, sa)))
        if pending:
            await call(asyncio.gather(*(f for _, _, f in pending), return_exceptions=True), "pending completions")
        typing_s = time.perf_counter() - t_typing
        s2 = await stats()
        typed = _delta(s1, s2)
        result = {
            "encoding": enc, "ready_s": round(ready_s, 2), "warmup_ms": round(warm_ms, 1),
            "open_ms": round(open_ms, 1), "open_stats": open_stats, "typing_s": round(typing_s, 2),
            "stats_keystrokes": typed, "stats_total": s2, "keystrokes": [asdict(k) for k in keys],
        }
    finally:
        try:
            await asyncio.wait_for(client.shutdown_async(None), 30)
            client.exit(None)
            await asyncio.wait_for(client.stop(), 30)
        except Exception:
            if server is not None and server.returncode is None:
                server.kill()  # our own child process, by its handle
                await server.wait()
        drainer.cancel()
        if log is not None:
            log.close()
    return result


def summarize(res: dict[str, Any], script: Script, args: argparse.Namespace) -> dict[str, Any]:
    keys = res["keystrokes"]
    lat = [k["latency_ms"] for k in keys if k["latency_ms"] is not None]
    s = res["stats_keystrokes"]
    prompt, reused = s.get("prompt_tokens", 0), s.get("reused_tokens", 0)
    answered = [k for k in keys if k["shown"]]
    # In await mode each keystroke carries its own stats delta: split model runs from typed-through.
    model_lat = [k["latency_ms"] for k in keys if k["stats"] and not k["stats"].get("typed_through")
                 and k["latency_ms"] is not None]
    nxt = [k for k in keys[1:]]
    return {
        "keystrokes": len(keys),
        "chars": sum(len(k["typed"]) for k in keys),
        "mode": f"{args.cps:g} chars/s, no waiting" if args.cps else "await each answer",
        "latency_ms": {
            "p50": _round(_pct(lat, 0.5)), "p95": _round(_pct(lat, 0.95)), "max": _round(max(lat) if lat else None),
            "mean": _round(statistics.fmean(lat) if lat else None),
        },
        "latency_ms_model_runs": {
            "n": len(model_lat), "p50": _round(_pct(model_lat, 0.5)), "p95": _round(_pct(model_lat, 0.95)),
        } if model_lat else None,
        "reuse": round(reused / prompt, 4) if prompt else None,
        "prompt_tokens": prompt,
        "reused_tokens": reused,
        "completions": s.get("completions", 0),
        "typed_through": s.get("typed_through", 0),
        "cancelled": s.get("cancelled", 0),
        "errors": s.get("errors", 0),
        "tokens": s.get("tokens", 0),
        "drafted": s.get("drafted", 0),
        "accepted": s.get("accepted", 0),
        "non_empty_answers": len(answered),
        "next_keystroke_predicted": sum(1 for k in nxt if k["predicted"]),
        "open_ms": res["open_ms"],
        "ready_s": res["ready_s"],
        "goals": GOALS,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def print_report(summ: dict[str, Any], script: Script, info: dict[str, Any]) -> None:
    lat = summ["latency_ms"]

    def sec(ms: float | None) -> str:
        return "-" if ms is None else f"{ms / 1e3:.3f} s" if ms < 1000 else f"{ms / 1e3:.2f} s"

    def ok(good: bool | None) -> str:
        return "" if good is None else ("  (met)" if good else "  (NOT met)")

    reuse = summ["reuse"]
    print(f"\ntyping {summ['chars']} characters ({summ['keystrokes']} keystrokes) of {script.name} over LSP stdio; "
          f"{summ['mode']}; server {info['server_options'] or 'defaults'}")
    print(f"  server ready {summ['ready_s']:.1f} s after start; first completion on open {sec(summ['open_ms'])}")
    print(f"  {'figure':<34}{'value':>12}   goal")
    print(f"  {'keystroke -> answer p50':<34}{sec(lat['p50']):>12}   <= {GOALS['p50_s']} s"
          f"{ok(None if lat['p50'] is None else lat['p50'] / 1e3 <= GOALS['p50_s'])}")
    print(f"  {'keystroke -> answer p95':<34}{sec(lat['p95']):>12}   <= {GOALS['p95_s']} s"
          f"{ok(None if lat['p95'] is None else lat['p95'] / 1e3 <= GOALS['p95_s'])}")
    print(f"  {'keystroke -> answer max':<34}{sec(lat['max']):>12}")
    if summ.get("latency_ms_model_runs"):
        m = summ["latency_ms_model_runs"]
        print(f"  {'  model runs only (' + str(m['n']) + ') p50 / p95':<34}{sec(m['p50']):>12}   / {sec(m['p95'])}")
    print(f"  {'prompt tokens reused':<34}{'-' if reuse is None else f'{reuse:.1%}':>12}   >= {GOALS['reuse']:.0%}"
          f"{ok(None if reuse is None else reuse >= GOALS['reuse'])}"
          f"   ({summ['reused_tokens']}/{summ['prompt_tokens']} tokens)")
    print(f"  {'typed-through hits':<34}{summ['typed_through']:>12}")
    print(f"  {'completions (model + typed-through)':<34}{summ['completions']:>12}")
    print(f"  {'cancelled / superseded':<34}{summ['cancelled']:>12}")
    print(f"  {'errors':<34}{summ['errors']:>12}")
    print(f"  {'non-empty answers':<34}{summ['non_empty_answers']:>12}")
    print(f"  {'next keystroke predicted':<34}{summ['next_keystroke_predicted']:>12}   (shown suggestion began with it)")
    print(f"  {'tokens generated':<34}{summ['tokens']:>12}   draft tokens accepted/drafted {summ['accepted']}/{summ['drafted']}")
    print("  goals are printed for reference; the benchmark asserts nothing.")


def run(args: argparse.Namespace) -> int:
    script = make_script(args)
    if not script.keystrokes:
        raise SystemExit("gemma-lsp bench typing: nothing to type")
    import torch

    info = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "server_options": server_options(args),
        "GEMMA_LSP_CACHE": os.environ.get("GEMMA_LSP_CACHE"),
    }
    print(f"typing {sum(len(k) for k in script.keystrokes)} characters of {script.name} "
          f"({len(script.keystrokes)} keystrokes) into `{sys.executable} -m gemma_lsp serve`...", file=sys.stderr)
    res = asyncio.run(_bench(args, script))
    info["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    summ = summarize(res, script, args)
    print_report(summ, script, info)
    if args.json:
        out = {
            "bench": "typing", "script": {"name": script.name, "language": script.language,
                                           "before_chars": len(script.before), "after_chars": len(script.after)},
            "args": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
            "machine": info, "summary": summ, **res,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
