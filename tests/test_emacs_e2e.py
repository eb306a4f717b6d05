"""End to end in a real Emacs 28: eglot 1.9 and lsp-mode 8.0 (Debian's elpa-eglot and
elpa-lsp-mode), each through completion-at-point and through company, with editors/emacs
loaded as its README says, against `gemma-lsp serve` on the real default model.

Emacs runs interactively (`emacs -nw`) in a pseudo-terminal; tests/emacs_driver.el types
the keys a user types (M-x eglot or M-x lsp, the space after `return`, C-M-i or
M-x company-complete, RET) through Emacs's own command loop. The test then runs the saved
file: the completed line must make its asserts pass.

Slow: each test starts the server and loads the model (10-60 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import need_default_model
from gemma_lsp.paths import cache_dir
from real_editors import ROOT, TASK_LINE, need, emacs_has, run_file, run_in_pty, server_command, write_task

DRIVER = Path(__file__).with_name("emacs_driver.el")
DEADLINE_S = 240  # the driver gives up here; the pty is killed a little later

pytestmark = pytest.mark.slow

CASES = [("eglot", "capf"), ("eglot", "company"), ("lsp-mode", "capf"), ("lsp-mode", "company")]


def write_init(home: Path, client: str) -> None:
    """The init file editors/emacs/README.md tells a user to write, literally."""
    command = " ".join(f'"{a}"' for a in server_command())
    lines = [f'(add-to-list \'load-path "{ROOT / "editors" / "emacs"}")']
    if client == "eglot":  # the README: to use gemma-lsp instead of the language's server
        lines.append("(setq gemma-lsp-eglot-placement 'prepend)")
    lines += ["(require 'gemma-lsp)",
              f"(setq gemma-lsp-command '({command}))"]  # the README's fix when not on exec-path
    (home / ".emacs.d").mkdir(parents=True)
    (home / ".emacs.d" / "init.el").write_text("\n".join(lines) + "\n")
    # Not the README's: a fresh HOME would native-compile Debian's elpa packages in the
    # background (a user's Emacs does it once), taking both cores while the test measures
    # nothing of ours; the time policy then rightly answers nothing rather than a fragment.
    (home / ".emacs.d" / "early-init.el").write_text("(setq native-comp-deferred-compilation nil)\n")


@pytest.mark.parametrize(("client", "ui"), CASES, ids=[f"{c}-{u}" for c, u in CASES])
def test_completes_in_real_emacs(tmp_path: Path, client: str, ui: str) -> None:
    need_default_model()
    need(shutil.which("emacs") is not None, "emacs")
    packages = [client] + (["company"] if ui == "company" else [])
    need(emacs_has(*packages), f"Emacs packages {packages} (Debian: elpa-eglot, elpa-lsp-mode, elpa-company)")

    path = write_task(tmp_path / "project")
    result_file = tmp_path / "result.json"
    params = {
        "file": str(path), "line": TASK_LINE, "client": client, "ui": ui,
        "result": str(result_file), "deadline_s": DEADLINE_S,
        "lsp_session": str(tmp_path / "lsp-session"),
        "done_regexp": "    return [^ \n]",  # a real newline in the class
    }
    home = tmp_path / "home"
    write_init(home, client)
    # A fresh HOME (no other init, no saved lsp-mode session); the model cache stays put.
    env = {**os.environ, "TERM": "xterm-256color", "HOME": str(home), "GEMMA_LSP_CACHE": str(cache_dir()),
           "GEMMA_DRIVER_PARAMS": json.dumps(params)}
    status, screen = run_in_pty(["emacs", "-nw", "-l", str(DRIVER)], env, DEADLINE_S + 30)

    assert result_file.exists(), f"Emacs wrote no result (exit {status}); screen:\n{screen}"
    result = json.loads(result_file.read_text())
    report = ("\n".join(result["steps"]) + "\n--- *Messages*\n" + result["messages"][-3000:]
              + "\n--- LSP traffic\n" + result["events"])
    assert result["status"] == "ok", f"{result['status']}\n{report}"
    graded = run_file(path)
    assert graded.returncode == 0, (f"completed line {result['line']!r} does not pass the task:\n"
                                    f"{graded.stderr[-2000:]}\n{report}")
