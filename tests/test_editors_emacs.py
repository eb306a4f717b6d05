"""Checks of editors/emacs/gemma-lsp.el with a batch Emacs (Debian: apt-get install emacs-nox).

These run `emacs -Q` (no packages), so eglot and lsp-mode are replaced by small stand-ins
that record what the package registers, and the file must byte-compile without warnings
with neither present (Emacs 28 has no built-in eglot). The real eglot and lsp-mode are
driven in tests/test_emacs_e2e.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "editors" / "emacs" / "gemma-lsp.el"
EMACS = shutil.which("emacs")

pytestmark = pytest.mark.skipif(
    EMACS is None, reason="emacs not on PATH (Debian: apt-get install -y emacs-nox)"
)


def _emacs(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EMACS, "--batch", "-Q", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_byte_compiles_without_warnings(tmp_path: Path) -> None:
    shutil.copy(SOURCE, tmp_path)
    proc = _emacs(
        ["--eval", "(setq byte-compile-error-on-warn t)", "-f", "batch-byte-compile", "gemma-lsp.el"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "gemma-lsp.elc").exists()


def test_checkdoc_and_package_headers(tmp_path: Path) -> None:
    shutil.copy(SOURCE, tmp_path)
    proc = _emacs(
        [
            "--eval",
            """(progn
                 (require 'checkdoc)
                 (require 'package)
                 (checkdoc-file "gemma-lsp.el")
                 (with-temp-buffer
                   (insert-file-contents "gemma-lsp.el")
                   (let ((desc (package-buffer-info)))
                     (princ (format "PKG %s %s %S\\n"
                                    (package-desc-name desc)
                                    (package-version-join (package-desc-version desc))
                                    (package-desc-reqs desc))))))""",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PKG gemma-lsp 0.1.0 ((emacs (28 1)))" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr
    text = SOURCE.read_text()
    assert "lexical-binding: t" in text.splitlines()[0]
    assert text.rstrip().endswith(";;; gemma-lsp.el ends here")


ERT = r"""
(require 'ert)
(require 'json)
(add-to-list 'load-path default-directory)
(require 'gemma-lsp)

(ert-deftest gemma-lsp-settings-json ()
  (let ((gemma-lsp-drafter "ngram") (gemma-lsp-max-tokens 32)
        (gemma-lsp-model "gemma4-31b") (gemma-lsp-time-budget-ms 500))
    (let ((obj (json-read-from-string (gemma-lsp-settings-json))))
      (let ((s (alist-get 'gemmaLsp obj)))
        (should (equal (alist-get 'drafter s) "ngram"))
        (should (equal (alist-get 'maxTokens s) 32))
        (should (equal (alist-get 'model s) "gemma4-31b"))
        (should (equal (alist-get 'timeBudgetMs s) 500))
        (should (assq 'draftModel s))
        (should (null (alist-get 'draftModel s))))))
  (should (string-match-p "\"draftModel\":null" (gemma-lsp-settings-json)))
  (should-not (string-match-p "timeBudgetMs" (gemma-lsp-settings-json))))

(ert-deftest gemma-lsp-format-stats ()
  (let ((line (gemma-lsp-format-stats
               '(:completions 3 :drafted 40 :accepted 30 :prompt_tokens 1000
                 :reused_tokens 900 :latency_ms (:p50 80 :p95 200 :last 150)))))
    (should (string-match-p "3 completions" line))
    (should (string-match-p "acceptance 75% (30/40)" line))
    (should (string-match-p "reuse 90% (900/1000)" line))
    (should (string-match-p "p50 80 ms p95 200 ms last 150 ms" line)))
  (should (string-match-p "acceptance - (0/0)" (gemma-lsp-format-stats nil))))

;; eglot stand-in: the real eglot (Emacs 29+) is not in Emacs 28.
(ert-deftest gemma-lsp-eglot-registration ()
  (defvar eglot-server-programs)
  (setq eglot-server-programs '((python-mode . ("pylsp")) (rust-mode . ("rust-analyzer"))))
  (provide 'eglot)                      ; runs the with-eval-after-load form
  (let ((entry (car (last eglot-server-programs))))
    (should (eq (cdr entry) #'gemma-lsp-eglot-contact))
    (should (memq 'python-mode (car entry))))
  (should (equal (cdr (car eglot-server-programs)) '("pylsp")))
  (let ((contact (gemma-lsp-eglot-contact nil)))
    (should (equal (seq-take contact 2) '("gemma-lsp" "serve")))
    (should (eq (nth 2 contact) :initializationOptions))
    (should (equal (plist-get (plist-get (nth 3 contact) :gemmaLsp) :drafter) "auto")))
  (let ((gemma-lsp-eglot-placement 'prepend))
    (gemma-lsp-eglot-register))
  (should (eq (cdr (car eglot-server-programs)) #'gemma-lsp-eglot-contact))
  (should (= 1 (seq-count (lambda (e) (eq (cdr e) #'gemma-lsp-eglot-contact))
                          eglot-server-programs))))

;; lsp-mode stand-in: records what make-lsp-client and lsp-register-client get.
(defvar gemma-lsp-test--registered nil)
(ert-deftest gemma-lsp-lsp-mode-registration ()
  (defun lsp-stdio-connection (cmd) (list :stdio cmd))
  (defun make-lsp-client (&rest args) args)
  (defun lsp-register-client (client) (push client gemma-lsp-test--registered))
  (provide 'lsp-mode)                   ; runs the with-eval-after-load form
  (should (= 1 (length gemma-lsp-test--registered)))
  (let ((c (car gemma-lsp-test--registered)))
    (should (eq (plist-get c :server-id) 'gemma-lsp))
    (should (eq (plist-get c :add-on?) t))
    (should (equal (funcall (plist-get (plist-get c :new-connection) :stdio))
                   '("gemma-lsp" "serve")))
    (should (funcall (plist-get c :activation-fn) "/x/a.py" 'python-mode))
    (should-not (funcall (plist-get c :activation-fn) "/x/a.txt" 'text-mode))
    (let ((opts (funcall (plist-get c :initialization-options))))
      (should (equal (plist-get (plist-get opts :gemmaLsp) :maxTokens) 64)))))

(ert-deftest gemma-lsp-commands-without-server ()
  (with-temp-buffer
    (should-error (gemma-lsp-stats) :type 'user-error)
    (should-error (gemma-lsp-update-settings) :type 'user-error)))
"""


def test_registration_with_stand_ins(tmp_path: Path) -> None:
    shutil.copy(SOURCE, tmp_path)
    (tmp_path / "gemma-lsp-test.el").write_text(ERT)
    proc = _emacs(["-l", "gemma-lsp-test.el", "-f", "ert-run-tests-batch-and-exit"], tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Ran 5 tests, 5 results as expected" in out, out


def test_raises_jsonrpc_request_timeout_for_eglot(tmp_path: Path) -> None:
    """eglot's requests go through jsonrpc (built into Emacs 27+), whose 10 s default is
    shorter than a cold first completion on a slow CPU."""
    proc = _emacs(
        ["-L", str(SOURCE.parent), "--eval",
         "(progn (require 'gemma-lsp) (require 'jsonrpc) (princ (format \"T %s\\n\" jsonrpc-default-request-timeout)))"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "T 30" in proc.stdout, proc.stdout + proc.stderr
