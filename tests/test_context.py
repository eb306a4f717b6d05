"""context: prefix/suffix windows, secret files, the ring of other files' chunks."""

from __future__ import annotations

import pytest

from gemma_lsp.complete import context
from gemma_lsp.complete.context import STEP, ContextRing, is_secret, select_extras, windows
from gemma_lsp.text import line_starts as _line_starts


def words(s: str) -> int:
    return len(s.split())


def chars(s: str) -> int:
    return len(s)


def numbered(n: int, eol: str = "\n") -> str:
    return "".join(f"line{i} a b c{eol}" for i in range(n))


def line_index(text: str, pos: int) -> int:
    """Line number of a line start `pos` under LSP rules."""
    starts = _line_starts(text)
    assert pos in starts, f"{pos} is not a line start"
    return starts.index(pos)


# --- windows: basic contract ----------------------------------------------------------


def test_small_file_fits_whole():
    text = "def f():\n    return 1\n\nprint(f())\n"
    off = text.index("return") + 3
    pre, suf = windows(text, off, words, 1000, 1000)
    assert pre == text[:off]
    assert suf == text[off:]


@pytest.mark.parametrize("count", [words, chars])
def test_prefix_ends_and_suffix_starts_at_cursor(count):
    text = numbered(200)
    off = text.index("line100 a") + 7
    pre, suf = windows(text, off, count, 120, 60)
    assert text[off - len(pre) : off] == pre
    assert text[off : off + len(suf)] == suf
    assert count(pre) <= 120
    assert count(suf) <= 60
    assert pre and suf


def test_budget_and_step_alignment():
    text = numbered(200)  # 4 words a line
    off = text.index("line100 a") + 5
    pre, suf = windows(text, off, words, 100, 40)
    begin = off - len(pre)
    assert line_index(text, begin) % STEP == 0
    # the earliest aligned block that fits: line 96 fits (4 lines + part), line 80 -> 20 lines = 81 words fits,
    # line 64 -> 36 lines*4 + 1 = 145 words does not
    assert line_index(text, begin) == 80
    assert words(pre) == 20 * 4 + 1
    # suffix: to line 112 is the rest of line 100 + 11 lines = 4 + 44 = 48 words > 40, so it falls
    # back to the rest of the cursor line
    assert suf == text[off : text.index("line101 ")]


def test_suffix_takes_latest_aligned_end_that_fits():
    text = numbered(200)
    off = text.index("line100 a") + 5
    _, suf = windows(text, off, words, 100, 200)
    end = off + len(suf)
    # 112: 4 + 11*4 = 48; 128: 112; 144: 176; 160: 240 > 200
    assert line_index(text, end) == 144
    assert words(suf) == 176


def test_suffix_runs_to_end_of_text_when_it_fits():
    text = numbered(20)
    off = text.index("line3 ")
    _, suf = windows(text, off, words, 100, 1000)
    assert suf == text[off:]


def test_cursor_at_start_and_end():
    text = numbered(40)
    pre, suf = windows(text, 0, words, 50, 50)
    assert pre == ""
    # to line 16 is 64 words > 50: only the cursor line's rest
    assert suf == "line0 a b c\n"
    _, suf = windows(text, 0, words, 50, 64)
    assert suf == text[: text.index("line16 ")]
    pre, suf = windows(text, len(text), words, 50, 50)
    assert suf == ""
    assert text.endswith(pre)
    assert words(pre) <= 50


def test_zero_budgets():
    text = numbered(40)
    off = text.index("line20")
    pre, suf = windows(text, off, chars, 0, 0)
    assert (pre, suf) == ("", "")


# --- windows: stability while typing ---------------------------------------------------


@pytest.mark.parametrize("count", [words, chars])
def test_typing_keeps_window_start_and_suffix(count):
    base = numbered(300)
    off = base.index("line150 a b c") + len("line150 a b c")
    budget_pre = count(base[base.index("line128 ") : off]) + 40  # room to type
    budget_suf = 80
    pre0, suf0 = windows(base, off, count, budget_pre, budget_suf)
    begin0 = off - len(pre0)
    assert line_index(base, begin0) == 128
    text = base
    typed = " = foo(bar, baz)"
    for i, ch in enumerate(typed):
        text = text[:off] + ch + text[off:]
        off += 1
        pre, suf = windows(text, off, count, budget_pre, budget_suf)
        assert off - len(pre) == begin0, f"prefix start moved after typing {typed[: i + 1]!r}"
        assert pre == pre0 + typed[: i + 1]
        assert suf == suf0


def test_window_start_only_jumps_by_whole_steps():
    text = numbered(300)
    off = text.index("line200 ")
    seen = set()
    for budget in range(STEP * 4 + 1, 400, 7):  # at least one whole block fits
        pre, _ = windows(text, off, words, budget, 10)
        seen.add(line_index(text, off - len(pre)))
    assert seen and all(n % STEP == 0 for n in seen)


# --- windows: line endings ---------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_line_endings_are_lsp_ones(eol):
    text = numbered(100, eol)
    assert len(_line_starts(text)) == 101
    off = text.index("line50 a") + 6
    pre, suf = windows(text, off, words, 60, 30)
    # 60 words from line 50: from line 48 -> 2 lines + 1 word = 9; from 32 -> 18*4+1 = 73 > 60
    assert pre == text[text.index("line48 ") : off]
    # to line 64: 3 + 13*4 = 55 > 30 -> the rest of the cursor line, with its line end
    assert suf == " a b c" + eol
    _, suf = windows(text, off, words, 60, 55)
    assert suf == text[off : text.index("line64 ")]


def test_crlf_is_one_break():
    assert _line_starts("a\r\nb\rc\nd") == [0, 3, 5, 7]
    assert _line_starts("\r\n\r\n") == [0, 2, 4]
    assert _line_starts("\n\r") == [0, 1, 2]  # LF then CR: two breaks


@pytest.mark.parametrize("sep", ["\x0c", "\u2028", "\u2029", "\x0b", "\x85", "\x1c"])
def test_other_separators_are_not_line_breaks(sep):
    assert _line_starts(f"a{sep}b{sep}c\nd") == [0, 6]
    # windows count lines as LSP does: were `sep` a break, line 16 would be line 32 and the
    # aligned start would land elsewhere
    text = "".join(f"l{i:02d}{sep}x\n" for i in range(40))  # 40 LSP lines of 6 chars
    off = text.index("l20")
    pre, suf = windows(text, off, chars, 30, 100)  # to line 32: 72 chars; to the end: 120
    assert pre == text[text.index("l16") :off]
    assert suf == text[off : text.index("l32")]


# --- windows: a huge single line ----------------------------------------------------------


def test_huge_single_line_falls_back_within_budget():
    text = "x = [" + ", ".join(str(i) for i in range(20000)) + "]\n"
    off = len(text) - 2
    calls = 0

    def counting(s: str) -> int:
        nonlocal calls
        calls += 1
        return len(s)

    pre, suf = windows(text, off, counting, 1000, 100)
    assert 0 < len(pre) <= 1000
    assert len(pre) > 1000 - 256  # the 256-char step that fits, not much less
    assert (off - len(pre)) % 256 == 0
    assert pre == text[off - len(pre) : off]
    assert suf == "]\n"
    assert calls < 60  # binary search, not a scan of the line


def test_huge_line_start_is_stable_while_typing():
    text = "s = '" + "abcdefghij" * 5000
    off = len(text)
    pre0, _ = windows(text, off, chars, 2000, 100)
    begin0 = off - len(pre0)
    for ch in "klmnop":
        text += ch
        off += 1
        pre, _ = windows(text, off, chars, 2000, 100)
        if off - len(pre) != begin0:
            assert (off - len(pre)) - begin0 == 256  # moves only by whole steps
            begin0 = off - len(pre)


def test_huge_line_in_middle_of_file():
    text = numbered(20) + "y = '" + "z" * 10000 + "'\n" + numbered(5)
    off = text.index("'\n", 20) + 1
    pre, suf = windows(text, off, chars, 500, 50)
    assert len(pre) <= 500 and pre
    assert text[off - len(pre) : off] == pre
    assert suf == "\n"  # the next aligned boundary's text is too long; the cursor line's rest fits


# --- is_secret -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".env", ".env.local", "prod.env", "x.pem", "id_rsa", "id_ed25519.pub", "/home/u/.ssh/config",
        ".aws/credentials", ".npmrc", "/proj/.env", "C:\\Users\\u\\.ssh\\known_hosts", "/p/server.key",
        "/p/.netrc", "/p/.pypirc", "/p/.git-credentials", "/home/u/.docker/config.json", "/p/.envrc",
        "/p/.ENV", "/p/db.kdbx",
    ],
)
def test_secret(path):
    assert is_secret(path) is True


@pytest.mark.parametrize(
    "path",
    [
        "main.py", "environment.py", "keys.py", "README.md", "/proj/src/env.py", "/p/envs/dev.yaml",
        "/p/keyboard.c", "/p/pem_utils.py", "/p/credentials_test.go", "/p/ssh/client.py", "",
    ],
)
def test_not_secret(path):
    assert is_secret(path) is False


# --- ContextRing ------------------------------------------------------------------------------


def test_ring_secret_never_in_extras():
    ring = ContextRing()
    ring.offer("file:///p/a.py", "/p/a.py", "python", "A = 1\n")
    ring.offer("file:///p/.env", "/p/.env", "dotenv", "TOKEN=hunter2\n")
    ring.offer("file:///h/.ssh/config", "/h/.ssh/config", "ssh", "Host x\n")
    out = select_extras(ring.chunks("file:///p/cur.py"), chars, 10_000)
    assert out == [("a.py", "A = 1\n")]
    assert all("hunter2" not in t for _, t in out)


def test_ring_secret_replaces_earlier_chunk_of_same_uri():
    ring = ContextRing()
    ring.offer("u1", "/p/notes.txt", "text", "hello\n")
    ring.offer("u1", "/p/.env", "dotenv", "K=v\n")  # renamed to a secret: the old chunk goes too
    assert select_extras(ring.chunks("cur"), chars, 1000) == []


def test_ring_oldest_first_excludes_current_and_budget():
    ring = ContextRing(max_files=6)
    for i in range(4):
        ring.offer(f"u{i}", f"/p/f{i}.py", "python", f"v{i} = {i}\n")
    assert [p for p, _ in select_extras(ring.chunks("cur"), chars, 10_000)] == ["f0.py", "f1.py", "f2.py", "f3.py"]
    assert [p for p, _ in select_extras(ring.chunks("u2"), chars, 10_000)] == ["f0.py", "f1.py", "f3.py"]
    # each chunk costs len(text) + 8 = 15: a budget of 31 keeps the two newest, still oldest first
    assert [p for p, _ in select_extras(ring.chunks("cur"), chars, 31)] == ["f2.py", "f3.py"]
    assert select_extras(ring.chunks("cur"), chars, 14) == []


def test_ring_reoffer_identical_does_not_reorder_but_change_does():
    ring = ContextRing()
    ring.offer("a", "/p/a.py", "python", "a = 1\n")
    ring.offer("b", "/p/b.py", "python", "b = 1\n")
    ring.offer("a", "/p/a.py", "python", "a = 1\n")
    assert [p for p, _ in select_extras(ring.chunks("cur"), chars, 1000)] == ["a.py", "b.py"]
    ring.offer("a", "/p/a.py", "python", "a = 2\n")
    assert select_extras(ring.chunks("cur"), chars, 1000) == [("b.py", "b = 1\n"), ("a.py", "a = 2\n")]


def test_ring_max_files_and_blank():
    ring = ContextRing(max_files=2)
    for i in range(3):
        ring.offer(f"u{i}", f"/p/f{i}.py", "python", f"v{i}\n")
    assert [p for p, _ in select_extras(ring.chunks("cur"), chars, 1000)] == ["f1.py", "f2.py"]
    ring.offer("blank", "/p/blank.py", "python", "\n\n")  # takes u1's place, and is never an extra
    assert [p for p, _ in select_extras(ring.chunks("cur"), chars, 1000)] == ["f2.py"]


def test_ring_chunk_is_window_around_line():
    ring = ContextRing(max_lines=10)
    text = "".join(f"l{i}\n" for i in range(100))
    ring.offer("u", "/p/big.py", "python", text, line=50)
    [(_, chunk)] = select_extras(ring.chunks("cur"), chars, 10_000)
    assert chunk == "".join(f"l{i}\n" for i in range(45, 55))
    ring.offer("u", "/p/big.py", "python", text, line=99)
    [(_, chunk)] = select_extras(ring.chunks("cur"), chars, 10_000)
    assert chunk == "".join(f"l{i}\n" for i in range(90, 100))


def test_step_is_positive_int():
    assert isinstance(context.STEP, int) and context.STEP >= 1


def test_extras_skip_copies_of_the_current_file_and_of_each_other():
    from gemma_lsp.complete.context import Chunk, select_extras

    doc = "def fib(n):\n    return fib(n - 1)\n"
    chunks = [Chunk("/a/copy.py", "python", "def fib(n):\n"), Chunk("/a/util.py", "python", "X = 1\n"),
              Chunk("/b/util.py", "python", "X = 1\n"), Chunk("/a/other.py", "python", "Y = 2\n")]
    picked = select_extras(chunks, len, 10_000, current=doc)
    assert picked == [("util.py", "X = 1\n"), ("other.py", "Y = 2\n")]
    assert len(select_extras(chunks, len, 10_000)) == 3  # without the document, only the repeat goes


def _chunks(*names: str) -> list:
    from gemma_lsp.complete.context import Chunk

    return [Chunk(f"/p/{n}.py", "python", f"{n} = 1\n" * 3) for n in names]  # 18 chars + 8 each


def test_extras_keep_the_previous_pick_first_and_always_take_the_newest():
    from gemma_lsp.complete.context import select_extras

    budget = 3 * 26  # three chunks fit
    first = select_extras(_chunks("a", "b", "c"), len, budget)
    assert [p for p, _ in first] == ["a.py", "b.py", "c.py"]
    head = [t for _, t in first]
    # d arrives: a sliding pick would be b, c, d (every token after the first chunk a miss);
    # the head's first chunks stay in place and d takes the last place
    second = select_extras(_chunks("a", "b", "c", "d"), len, budget, head=head)
    assert [p for p, _ in second] == ["a.py", "b.py", "d.py"]
    # a fixed point: its own result as head gives the same pick (warm-up == request)
    assert select_extras(_chunks("a", "b", "c", "d"), len, budget, head=[t for _, t in second]) == second
    # a head chunk that changed (the user came back and left again) ends the kept run there
    chunks = _chunks("a", "c", "d", "b")
    chunks[-1].text = "b = 2\n" * 3
    third = select_extras(chunks, len, budget, head=[t for _, t in second])
    assert [p for p, _ in third] == ["a.py", "d.py", "b.py"]  # a kept; then the newest of the rest
    # a head chunk gone from the ring: nothing after it can be kept
    assert [p for p, _ in select_extras(_chunks("b", "c", "d"), len, budget, head=head)] == ["b.py", "c.py", "d.py"]


def test_extras_head_gives_way_when_the_newest_needs_all_the_budget():
    from gemma_lsp.complete.context import Chunk, select_extras

    head = [t for _, t in select_extras(_chunks("a", "b"), len, 60)]
    big = Chunk("/p/big.py", "python", "x" * 50)
    assert [p for p, _ in select_extras(_chunks("a", "b") + [big], len, 60, head=head)] == ["big.py"]
    huge = Chunk("/p/huge.py", "python", "x" * 500)  # over the budget alone: the head stays
    assert [p for p, _ in select_extras(_chunks("a", "b") + [huge], len, 60, head=head)] == ["a.py", "b.py"]


def test_first_requests_in_new_files_reuse_the_other_files_kv(tiny_qwen_dir):
    """Real tiny engine, real tokenizer and prefix cache: a user opening file after file
    (each one's first request cold) keeps the extras' KV; before the sticky head, each new
    file slid the pick by one file and only the first token or so was reused."""
    from gemma_lsp.complete.completer import Completer, Snapshot
    from gemma_lsp.config import Settings
    from gemma_lsp.complete.context import ContextRing

    settings = Settings().merged({"model": str(tiny_qwen_dir), "dtype": "float32", "maxTokens": 2,
                                  "extraTokens": 400})
    completer = Completer.from_settings(settings)
    ring = ContextRing()
    files = [f"file:///p/m{i}.py" for i in range(6)]
    texts = ["".join(f"def m{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(5)) for i in range(6)]
    reused = []
    for i, (uri, text) in enumerate(zip(files, texts)):
        snap = Snapshot(uri, text + "def main():\n    ", len(text) + 16, "python", f"/p/m{i}.py",
                        chunks=ring.chunks(uri))
        c = completer.complete(snap, settings)
        reused.append(c.stats.reused_tokens)
        ring.offer(uri, f"/p/m{i}.py", "python", text)  # the user leaves the file
    per_chunk = completer.prompter.count(texts[0]) + 2
    from gemma_lsp.complete.context import select_extras
    assert len(select_extras(ring.chunks(""), completer.prompter.count, 400)) >= 3  # several files fit
    assert all(r >= per_chunk for r in reused[3:]), (reused, per_chunk)
