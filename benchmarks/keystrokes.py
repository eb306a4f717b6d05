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
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemma_lsp.lsp.stats import percentile

from .lsp_client import server_options
from .machine import loadavg

GOALS = {"p50_s": 0.8, "p95_s": 2.0, "reuse": 0.90}


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
        from gemma_lsp.complete.completer import language_of

        return Script(f"{path}:{start_line}", text[:start], keys, text[end:] if args.keep_suffix else "",
                      language_of(path) or "plaintext")
    from . import humaneval

    problems = humaneval.load_problems()
    if args.problem not in problems:
        raise SystemExit(f"gemma-lsp bench typing: unknown problem {args.problem!r}")
    p = problems[args.problem]
    body = p["canonical_solution"]
    indent = body[: len(body) - len(body.lstrip(" \t"))]  # the editor's auto-indent is already there
    return Script(args.problem, p["prompt"] + indent, keystrokes_of(body[len(indent):], args.chars))


def _delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    return {k: int(b[k]) - int(a.get(k, 0)) for k, v in b.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


async def _bench(args: argparse.Namespace, script: Script) -> dict[str, Any]:
    from lsprotocol import types as lsp

    from gemma_lsp.text import position_at

    from .lsp_client import lsp_session

    def shown(res) -> str:
        return res.items[0].insert_text if res is not None and res.items else ""

    async with lsp_session(args) as s:
        enc = s.encoding
        uri = "file:///bench/" + ("typed_" + Path(script.name.split(":")[0]).name.replace("/", "_"))
        if not uri.endswith(".py") and script.language == "python":
            uri += ".py"
        text = script.before + script.after
        cursor = len(script.before)
        version = 1
        s.open(uri, text, script.language)
        s0 = await s.stats()
        t0 = time.perf_counter()
        first = await s.inline(uri, lsp.Position(*position_at(text, cursor, enc)))
        open_ms = (time.perf_counter() - t0) * 1e3
        s1 = await s.stats()
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
            sb = await s.stats() if not args.cps else None
            t0 = time.perf_counter()
            version += 1
            s.change(uri, version, lsp.Position(line, col), k)
            text = text[:cursor] + k + text[cursor:]
            cursor += len(k)
            fut = asyncio.ensure_future(s.inline_request(uri, lsp.Position(*position_at(text, cursor, enc))))
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
                res = await s.call(fut, f"completion after keystroke {i + 1}")
                lat = (time.perf_counter() - t0) * 1e3
                sa = await s.stats()
                prev_shown = shown(res)
                keys.append(Keystroke(i, k, lat, prev_shown, predicted, _delta(sb, sa)))
        if pending:
            await s.call(asyncio.gather(*(f for _, _, f in pending), return_exceptions=True), "pending completions")
        typing_s = time.perf_counter() - t_typing
        s2 = await s.stats()
        return {
            "encoding": enc, "ready_s": round(s.ready_s, 2),
            "open_ms": round(open_ms, 1), "open_stats": open_stats, "typing_s": round(typing_s, 2),
            "stats_keystrokes": _delta(s1, s2), "stats_total": s2, "keystrokes": [asdict(k) for k in keys],
        }


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
            "p50": _round(percentile(lat, 0.5)), "p95": _round(percentile(lat, 0.95)), "max": _round(max(lat) if lat else None),
            "mean": _round(statistics.fmean(lat) if lat else None),
        },
        "latency_ms_model_runs": {
            "n": len(model_lat), "p50": _round(percentile(model_lat, 0.5)), "p95": _round(percentile(model_lat, 0.95)),
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
    if args.first_contact:
        from .first_contact import run as run_first_contact

        return run_first_contact(args)
    script = make_script(args)
    if not script.keystrokes:
        raise SystemExit("gemma-lsp bench typing: nothing to type")
    import torch

    info = {
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "loadavg_before": loadavg(),
        "server_options": server_options(args),
        "GEMMA_LSP_CACHE": os.environ.get("GEMMA_LSP_CACHE"),
    }
    print(f"typing {sum(len(k) for k in script.keystrokes)} characters of {script.name} "
          f"({len(script.keystrokes)} keystrokes) into `{sys.executable} -m gemma_lsp serve`...", file=sys.stderr)
    res = asyncio.run(_bench(args, script))
    info["loadavg_after"] = loadavg()
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
