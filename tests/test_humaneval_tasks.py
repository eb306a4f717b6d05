"""Tests for the HumanEval infilling harness.

These run real subprocesses on a handful of problems so that a broken mask,
a broken assembler or a sandbox that stops detecting failures shows up here
rather than as a silently wrong benchmark number.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from benchmarks.humaneval import (
    InfillTask,
    assemble,
    exact_match,
    load_problems,
    multi_line_tasks,
    program,
    run_tests,
    sample,
    single_line_tasks,
)

SUBSET = ("HumanEval/0", "HumanEval/2", "HumanEval/12", "HumanEval/35", "HumanEval/53")

TOY = {
    "task_id": "Toy/0",
    "prompt": 'def add(a, b):\n    """Add."""\n',
    "canonical_solution": "    if a:\n        return a + b\n\n    return b\n",
    "entry_point": "add",
    "test": "def check(f):\n    assert f(1, 2) == 3\n    assert f(0, 5) == 5\n",
}


@pytest.fixture(scope="module")
def problems() -> dict[str, dict[str, str]]:
    """A few real problems keep runtime low while exercising real solutions."""
    allp = load_problems()
    assert len(allp) == 164
    return {pid: allp[pid] for pid in SUBSET}


@pytest.fixture(scope="module")
def singles(problems: dict[str, dict[str, str]]) -> list[InfillTask]:
    return single_line_tasks(problems)


@pytest.fixture(scope="module")
def multis(problems: dict[str, dict[str, str]]) -> list[InfillTask]:
    return multi_line_tasks(problems, per_problem=None)


def _original(problems: dict[str, dict[str, str]], task: InfillTask) -> str:
    p = problems[task.problem_id]
    return p["prompt"] + p["canonical_solution"]


def _task(tasks: list[InfillTask], task_id: str) -> InfillTask:
    return next(t for t in tasks if t.task_id == task_id)


def test_toy_masking_is_exact() -> None:
    tasks = {t.task_id: t for t in single_line_tasks({"Toy/0": TOY})}
    assert sorted(tasks) == ["Toy/0/L1", "Toy/0/L2", "Toy/0/L4"]  # blank L3 skipped
    t = tasks["Toy/0/L2"]
    assert t.kind == "single"
    assert t.prefix == TOY["prompt"] + "    if a:\n        "
    assert t.middle == "return a + b\n"
    assert t.suffix == "\n    return b\n"

    (b,) = multi_line_tasks({"Toy/0": TOY}, per_problem=None)
    assert b.task_id == "Toy/0/B1-2" and b.kind == "multi"
    assert b.prefix == TOY["prompt"] + "    "
    assert b.middle == "if a:\n        return a + b\n"
    assert b.suffix == "\n    return b\n"


def test_cursor_sits_after_indentation(problems, singles, multis) -> None:
    for t in singles + multis:
        original_line_start = t.prefix.rsplit("\n", 1)[0] + "\n"
        indent = t.prefix[len(original_line_start) :]
        assert indent.strip() == "", t.task_id
        assert indent, f"{t.task_id}: solution lines are indented"
        assert t.middle and not t.middle[0].isspace(), t.task_id
        assert t.middle.endswith("\n"), t.task_id
        if t.kind == "single":
            assert t.middle.count("\n") == 1, t.task_id


def test_assemble_reproduces_original(problems, singles, multis) -> None:
    assert singles and multis
    for t in singles + multis:
        assert assemble(t, t.middle) == _original(problems, t), t.task_id


def test_only_nonblank_solution_lines_are_masked(problems, singles) -> None:
    for pid, p in problems.items():
        mine = [t for t in singles if t.problem_id == pid]
        nonblank = [ln for ln in p["canonical_solution"].splitlines() if ln.strip()]
        assert len(mine) == len(nonblank)
        for t in mine:
            assert t.prefix.startswith(p["prompt"]), t.task_id
            assert t.middle.strip(), t.task_id
            assert t.entry_point == p["entry_point"] and t.test == p["test"]


def test_multi_blocks_respect_bounds(problems) -> None:
    for t in multi_line_tasks(problems, min_lines=2, max_lines=3, per_problem=None):
        first, last = map(int, re.fullmatch(r".*/B(\d+)-(\d+)", t.task_id).groups())
        assert 2 <= last - first + 1 <= 3
        assert t.middle.count("\n") == last - first + 1
        assert all(line.strip() for line in t.middle.splitlines()), t.task_id
    one = multi_line_tasks(problems, per_problem=1, seed=7)
    assert one == multi_line_tasks(problems, per_problem=1, seed=7)
    assert len({t.problem_id for t in one}) == len(one)
    with pytest.raises(ValueError):
        multi_line_tasks(problems, min_lines=3, max_lines=2)


def test_task_ids_unique_and_well_formed(singles, multis) -> None:
    ids = [t.task_id for t in singles + multis]
    assert len(ids) == len(set(ids))
    for t in singles:
        assert re.fullmatch(r"HumanEval/\d+/L\d+", t.task_id)
    for t in multis:
        assert re.fullmatch(r"HumanEval/\d+/B\d+-\d+", t.task_id)
        assert t.task_id.startswith(t.problem_id + "/")


def test_ground_truth_passes(problems, singles) -> None:
    multis = multi_line_tasks(problems, per_problem=1, seed=0)
    chosen = sample(singles, 5, seed=1) + multis[:3]
    assert any(t.kind == "multi" for t in chosen)
    for t in chosen:
        result = run_tests(program(t, t.middle))
        assert result.passed and result.reason == "passed", (t.task_id, result)


def test_toy_ground_truth_and_wrong_answer() -> None:
    t = _task(single_line_tasks({"Toy/0": TOY}), "Toy/0/L4")
    assert run_tests(program(t, t.middle), timeout_s=5).passed
    bad = run_tests(program(t, "return None\n"), timeout_s=5)
    assert not bad.passed and bad.reason == "failed"


def test_wrong_completion_fails(singles) -> None:
    last = _task(singles, "HumanEval/0/L8")  # "return False"
    assert last.middle == "return False\n"
    res = run_tests(program(last, "return None\n"))
    assert not res.passed and res.reason == "failed", res
    assert "AssertionError" in res.detail

    ret = _task(singles, "HumanEval/53/L1")  # "return x + y"
    res = run_tests(program(ret, "pass\n"))
    assert not res.passed and res.reason in ("failed", "error"), res


def test_infinite_loop_times_out(singles) -> None:
    t = _task(singles, "HumanEval/53/L1")  # a plain statement: the loop parses
    start = time.monotonic()
    res = run_tests(program(t, "while True: pass\n"), timeout_s=2.0)
    elapsed = time.monotonic() - start
    assert res == res.__class__(False, "timeout", res.detail)
    assert 1.9 <= elapsed < 6.0


def test_syntax_error_is_reported(singles) -> None:
    t = _task(singles, "HumanEval/53/L1")
    res = run_tests(program(t, "return (x +\n"))
    assert not res.passed and res.reason in ("failed", "error"), res
    assert "SyntaxError" in res.detail


def test_sandbox_is_isolated() -> None:
    here = os.getcwd()
    assert run_tests(f"import os\nassert os.getcwd() != {here!r}\n").passed
    res = run_tests("input()\n", timeout_s=5)  # stdin closed: EOF, not a hang
    assert res.reason == "error" and "EOFError" in res.detail
    res = run_tests("print('x' * 10**6)\nraise SystemExit(3)\n", timeout_s=5)
    assert res.reason == "error" and len(res.detail) <= 300


def test_sampling_is_deterministic(singles) -> None:
    a = sample(singles, 7, seed=42)
    assert a == sample(singles, 7, seed=42)
    assert a != sample(singles, 7, seed=43)
    assert len(a) == 7 and len(set(t.task_id for t in a)) == 7
    assert all(t in singles for t in a)
    assert sample(singles, 10**6, seed=0) == singles
    # Golden value: Random.random() is stable across Python versions.
    assert sample(list(range(20)), 5, seed=1234) == GOLDEN_SAMPLE


GOLDEN_SAMPLE = [2, 7, 10, 17, 18]


def test_exact_match_rule() -> None:
    t = _task(single_line_tasks({"Toy/0": TOY}), "Toy/0/L2")
    assert exact_match(t, "return a + b\n")
    assert exact_match(t, "return a + b")  # missing newline
    assert exact_match(t, "  return a + b   \n\n")  # leading ws on first line, trailing blanks
    assert not exact_match(t, "return a+b\n")
    assert not exact_match(t, "return a + b\n    return b\n")  # extra code
    (b,) = multi_line_tasks({"Toy/0": TOY}, per_problem=None)
    assert exact_match(b, "if a:\n        return a + b")
    assert not exact_match(b, "if a:\n    return a + b\n")  # indentation matters


def test_background_children_are_killed(tmp_path) -> None:
    marker = tmp_path / "leaked"
    child = f"import time; time.sleep(1.0); open({str(marker)!r}, 'w').close()"
    parent = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {child!r}])\n"
    assert run_tests(parent, timeout_s=5).passed
    time.sleep(1.5)
    assert not marker.exists(), "a grandchild outlived run_tests"
