"""postprocess: only ever remove what the model wrote past the useful point; never damage a good answer."""

from __future__ import annotations

import pytest

from gemma_lsp.complete.postprocess import postprocess, single_line_wanted

# --- single_line_wanted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line_suffix, mode, want",
    [
        (")", "auto", True),
        ("  # note", "auto", True),
        ("", "auto", False),
        ("   \t", "auto", False),
        ("", "always", True),
        (")", "never", False),
    ],
)
def test_single_line_wanted(line_suffix, mode, want):
    assert single_line_wanted(line_suffix, mode) is want


# --- rules ------------------------------------------------------------------------------------


def test_single_line_cut():
    assert postprocess("a + b\n    return c\n", "    x = ", "\n", single_line=True) == "a + b"


def test_single_line_cut_crlf():
    assert postprocess("a + b\r\n    return c", "    x = ", "\r\n", single_line=True) == "a + b"


def test_inside_call_retyped_closer_is_cut():
    assert postprocess("a, b)", "foo(", ")\n", single_line=True) == "a, b"


def test_inside_call_retyped_rest_of_line_is_cut():
    assert postprocess("a, b):", "def foo(", "):\n    pass\n", single_line=True) == "a, b"
    assert postprocess("1, 2]", "xs = [", "]\n", single_line=True) == "1, 2"
    assert postprocess("x))", "print(len(", "))\n", single_line=True) == "x"


def test_surplus_closer_only_when_suffix_has_it():
    assert postprocess("x)", "print(len(", "))\n", single_line=True) == "x"
    # no closer after the cursor: the model's ")" is needed
    assert postprocess("x)", "print(", "\n", single_line=True) == "x)"


@pytest.mark.parametrize(
    "raw, line_prefix, suffix",
    [
        # a balanced call inside a call: the ")" it ends with is its own, not the suffix's
        ("len(x)", "print(", ")\n"),
        ("foo(a, b)", "result = wrap(", ")\n"),
        ("xs[0]", "total = sum(", ")\n"),
        ("d[k]", "print(", ")\n"),
        ('"hello"', "print(", ")\n"),
    ],
)
def test_balanced_completion_before_closer_is_kept(raw, line_prefix, suffix):
    assert postprocess(raw, line_prefix, suffix, single_line=True) == raw


def test_multiline_repeating_suffix_is_cut():
    suffix = "\n    return total\n\n\ndef main():\n    pass\n"
    raw = "\n    for x in xs:\n        total += x\n    return total\n\n\ndef main():\n"
    assert postprocess(raw, "    total = 0", suffix, single_line=False) == "\n    for x in xs:\n        total += x"


def test_multiline_short_repeated_line_needs_a_run():
    # "}" alone is too short to trust; "}" followed by the suffix's next line is a repeat
    suffix = "\n}\n\nint main() {\n"
    raw = "\n    if (x) {\n        y();\n    }\n    return 0;\n}\n\nint main() {"
    assert postprocess(raw, "int f(int x) {", suffix, single_line=False) == (
        "\n    if (x) {\n        y();\n    }\n    return 0;"
    )


def test_dedent_cuts_before_new_top_level_def():
    raw = "return a + b\n\n\ndef other():\n    return 0\n"
    assert postprocess(raw, "    ", "", single_line=False) == "return a + b"


def test_dedent_keeps_nested_blocks():
    raw = "for x in xs:\n        if x:\n            yield x\n    return None"
    assert postprocess(raw, "    ", "\n", single_line=False) == raw


def test_dedent_from_blank_line_at_column_zero():
    raw = "    return 1\ndef g():\n    pass"
    assert postprocess(raw, "", "", single_line=False) == "    return 1"


@pytest.mark.parametrize("raw", ["", " ", "\n\n", "   \n\t\n  "])
def test_whitespace_only_is_empty(raw):
    assert postprocess(raw, "    ", "", single_line=False) == ""
    assert postprocess(raw, "    ", "", single_line=True) == ""


def test_truncated_multiline_drops_unfinished_last_line():
    raw = "a = 1\n    b = compute(x,"
    assert postprocess(raw, "    ", "", single_line=False, truncated=True) == "a = 1"


def test_truncated_multiline_ending_in_newline_keeps_last_line():
    raw = "a = 1\n    b = 2\n"
    assert postprocess(raw, "    ", "", single_line=False, truncated=True) == "a = 1\n    b = 2"


def test_truncated_single_line_keeps_partial_line():
    assert postprocess("foo(a, b", "x = ", "", single_line=True, truncated=True) == "foo(a, b"
    assert postprocess("foo(a, b", "x = ", "", single_line=False, truncated=True) == "foo(a, b"


def test_cut_by_time_is_whole_lines_or_nothing():
    # The first-contact bug: a deadline cut `fib(n - 1) + fib(n - 2)` to `fib`, and `fib` was shown.
    assert postprocess("fib", "    return ", "\n", single_line=True, timed_out=True) == ""
    assert postprocess("fib", "    return ", "\n", single_line=False, timed_out=True) == ""
    assert postprocess("fib(n - 1) + fib(n - 2)\n", "    return ", "\n", single_line=True, timed_out=True) == (
        "fib(n - 1) + fib(n - 2)")
    assert postprocess("a = 1\n    b = comp", "    ", "\n", single_line=False, timed_out=True) == "a = 1"


def test_a_gap_ends_where_it_leaves_the_cursors_indentation():
    # HumanEval/5 at 12:9: `return []` was due; the model went on at the outer indentation
    # for 65 tokens, writing again what the suffix already does.
    line_prefix = "        "
    suffix = "\n\n    result = []\n    for n in numbers[:-1]:\n        result.append(n)\n    return result\n"
    raw = "return []\n    if len(numbers) == 1:\n        return numbers\n"
    assert postprocess(raw, line_prefix, suffix, single_line=False) == "return []"
    from gemma_lsp.complete.postprocess import block_ended
    assert not block_ended("return []\n", line_prefix, suffix)
    assert block_ended("return []\n    if", line_prefix, suffix)  # decoding stops at the dedent
    # At the end of a file the block may still close into the function's level.
    assert postprocess("x += 1\n    return x", line_prefix, "\n", single_line=False) == "x += 1\n    return x"


def test_block_ended_when_the_text_starts_repeating_the_suffix():
    from gemma_lsp.complete.postprocess import block_ended

    suffix = "\n    total = sum(xs)\n    return total / len(xs)\n"
    assert not block_ended("xs = list(xs)\n    total = su", "    ", suffix)  # a line still being written
    assert block_ended("xs = list(xs)\n    total = sum(xs)\n", "    ", suffix)
    assert postprocess("xs = list(xs)\n    total = sum(xs)\n    return total / len(xs)", "    ", suffix,
                       single_line=False) == "xs = list(xs)"


def test_trailing_whitespace_is_trimmed():
    assert postprocess("x + 1   \n", "    return ", "\n", single_line=False) == "x + 1"


# --- correct answers pass through untouched -------------------------------------------------------

GOOD = [
    # (raw, line_prefix, suffix, single_line)
    ("return sorted(set(xs))", "    ", "\n\n\ndef main():\n    pass\n", False),
    (
        "\n    result = []\n    for item in items:\n        if item.ok:\n            result.append(item.value)\n    return result",
        "def collect(items):",
        "\n\n\nclass Item:\n    pass\n",
        False,
    ),
    ("n * factorial(n - 1)", "    return ", "\n", True),
    ("self.name = name", "        ", "\n        self.age = age\n", False),
    (
        "with open(path) as f:\n        return json.load(f)",
        "    ",
        "\n\n\ndef save(path, data):\n    ...\n",
        False,
    ),
    ("key=lambda p: p.age", "people.sort(", ")\n", True),
    ("[x * x for x in range(10)]", "squares = ", "\n", True),
    ('f"{name}: {value!r}"', "    return ", "\n", True),
    ("if not xs:\n        raise ValueError(\"empty\")\n    return xs[0]", "    ", "\n", False),
    ("ing", "    return self.nam", "\n", True),  # finishing an identifier (healed text already stripped)
    ("\n    pass", "def f():", "\n", False),
    ("a, b = b, a + b", "        ", "\n    return a\n", False),
]


@pytest.mark.parametrize("raw, line_prefix, suffix, single", GOOD)
def test_good_completion_unchanged(raw, line_prefix, suffix, single):
    assert postprocess(raw, line_prefix, suffix, single) == raw
    assert postprocess(raw, line_prefix, suffix, single, truncated=False) == raw


def test_dedent_follows_the_block_the_suffix_resumes_in():
    # Finishing a loop and returning at function level (HumanEval/52 style) at the end of a file.
    raw = "if e >= t:\n            return False\n    return True"
    assert postprocess(raw, "        ", "\n", single_line=False) == raw
    # The same text where the suffix resumes inside the loop body: the dedented line goes.
    assert postprocess(raw, "        ", "\n        log(e)\n    return False\n", single_line=False) == (
        "if e >= t:\n            return False"
    )


def test_dedent_trusts_the_editors_indentation_over_the_models_first_line():
    # Without healing the model may start with a stray space; the body that follows is not a dedent.
    raw = " # halve n until it is odd\n    while n % 2 == 0:\n        n //= 2"
    assert postprocess(raw, "    ", "\n", single_line=False) == raw


def test_block_ended_agrees_with_the_cut():
    from gemma_lsp.complete.postprocess import block_ended

    body = "a, b = 0, 1\n    return b\n"
    assert not block_ended(body, "    ", "\n")
    assert not block_ended(body + "\n", "    ", "\n")  # blank lines do not end a block
    assert block_ended(body + "\ndef", "    ", "\n")  # a new top-level statement does
    assert postprocess(body + "\ndef main():\n    pass", "    ", "\n", single_line=False) == body.rstrip()
