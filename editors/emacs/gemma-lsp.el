;;; gemma-lsp.el --- Local code completion from the gemma-lsp server -*- lexical-binding: t; -*-

;; Copyright (C) 2025 The gemma-lsp authors

;; Author: The gemma-lsp authors
;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1"))
;; Keywords: languages, tools, convenience
;; SPDX-License-Identifier: Apache-2.0

;; This file is not part of GNU Emacs.

;;; Commentary:

;; Registers the `gemma-lsp' language server (a local code-completion model
;; behind LSP, started as "gemma-lsp serve") with eglot and with lsp-mode.
;;
;; lsp-mode: gemma-lsp is an add-on client; it runs next to the language's
;; own server and its answers are merged into the normal completion popup
;; (company, corfu, or `completion-at-point').
;;
;; eglot (built into Emacs 29+; on Emacs 28 from ELPA, e.g. Debian 12's
;; elpa-eglot 1.9, which works): eglot talks to ONE server per buffer, so by
;; default gemma-lsp is only appended to `eglot-server-programs' (used for
;; modes that have no other server).  Set `gemma-lsp-eglot-placement' to
;; `prepend' to use gemma-lsp instead of the language's server in
;; `gemma-lsp-major-modes', or start it for one project with
;; C-u M-x eglot RET gemma-lsp serve RET.
;;
;; Neither eglot nor lsp-mode shows inline (ghost-text) completion: the
;; server's answer comes as one popup completion item.
;;
;; Setup:
;;
;;   (add-to-list 'load-path "/path/to/gemma-lsp/editors/emacs")
;;   (require 'gemma-lsp)
;;   (setq gemma-lsp-drafter "ngram")   ; or M-x customize-group RET gemma-lsp
;;
;; Commands: `gemma-lsp-stats' shows the server's counters (gemma/stats),
;; `gemma-lsp-update-settings' sends the current settings to running servers.
;;
;; Everything that touches eglot or lsp-mode runs after that package loads
;; (`with-eval-after-load'), so this file loads and byte-compiles without
;; either of them: Emacs 28 has no built-in eglot, and lsp-mode comes from
;; MELPA (or Debian's elpa-lsp-mode).
;;
;; Request timeouts: eglot (through jsonrpc) and lsp-mode give up on a request
;; after 10 s.  The first completion in a file the server has not seen, on a
;; slow CPU, can take longer (its whole prompt is read first), so this file
;; raises both to `gemma-lsp-request-timeout' (never lowers them).

;;; Code:

(require 'json)
(require 'seq)
(require 'subr-x)

(defgroup gemma-lsp nil
  "Local code completion from the gemma-lsp language server."
  :group 'tools
  :prefix "gemma-lsp-")

(defcustom gemma-lsp-command '("gemma-lsp" "serve")
  "Command line that starts the server (LSP over stdio).
Use an absolute path when gemma-lsp is not on the variable
`exec-path', for example
\\='(\"~/.venv/bin/gemma-lsp\" \"serve\")."
  :type '(repeat string))

(defcustom gemma-lsp-model nil
  "Target model: a local Hugging Face directory, a GGUF file or a preset.
nil means the server's embedded default model."
  :type '(choice (const :tag "Embedded default" nil) string))

(defcustom gemma-lsp-draft-model nil
  "Draft model for the `model' drafter, or nil."
  :type '(choice (const :tag "None / preset's" nil) string))

(defcustom gemma-lsp-drafter "auto"
  "Speculative-decoding drafter."
  :type '(choice (const "auto") (const "none") (const "ngram")
                 (const "suggestion") (const "retrieval") (const "model")))

(defcustom gemma-lsp-max-tokens 64
  "Most tokens generated per completion."
  :type 'integer)

(defcustom gemma-lsp-single-line "auto"
  "Whether completions stop at the end of the line."
  :type '(choice (const "auto") (const "always") (const "never")))

(defcustom gemma-lsp-time-budget-ms nil
  "Time budget per completion in milliseconds; nil for the server's default."
  :type '(choice (const :tag "Server default" nil) integer))

(defcustom gemma-lsp-temperature 0.0
  "Sampling temperature; 0 is greedy."
  :type 'number)

(defcustom gemma-lsp-request-timeout 30
  "Seconds eglot and lsp-mode wait for a request before giving up.
Both default to 10 s; loading this file raises `jsonrpc-default-request-timeout'
and `lsp-response-timeout' to this value when they are lower (they are global:
other servers get the longer wait too).  nil leaves them alone."
  :type '(choice (const :tag "Leave as is" nil) integer))

(defcustom gemma-lsp-major-modes
  '(python-mode python-ts-mode rust-mode rust-ts-mode go-mode go-ts-mode
    c-mode c-ts-mode c++-mode c++-ts-mode java-mode java-ts-mode
    js-mode js-ts-mode typescript-mode typescript-ts-mode tsx-ts-mode
    lua-mode lua-ts-mode sh-mode bash-ts-mode ruby-mode ruby-ts-mode
    emacs-lisp-mode)
  "Major modes in which gemma-lsp is offered.
Changes take effect for eglot when this file is loaded again; lsp-mode
reads it each time it starts servers."
  :type '(repeat symbol))

(defcustom gemma-lsp-eglot-placement 'append
  "How gemma-lsp is added to `eglot-server-programs'.
`append': only used for modes without another server.
`prepend': replaces the language's server in `gemma-lsp-major-modes'
\(eglot runs one server per buffer).
nil: not added; start it with \\[universal-argument] \\[eglot]."
  :type '(choice (const append) (const prepend)
                 (const :tag "Do not register" nil)))

(defcustom gemma-lsp-lsp-mode-priority -2
  "Priority of the gemma-lsp add-on client in lsp-mode."
  :type 'integer)

;;;; Settings

(defun gemma-lsp-settings ()
  "The server's settings object as a plist; nil values are sent as JSON null."
  (append (list :model gemma-lsp-model
                :draftModel gemma-lsp-draft-model
                :drafter gemma-lsp-drafter
                :maxTokens gemma-lsp-max-tokens
                :singleLine gemma-lsp-single-line
                :temperature gemma-lsp-temperature)
          (and gemma-lsp-time-budget-ms
               (list :timeBudgetMs gemma-lsp-time-budget-ms))))

(defun gemma-lsp-initialization-options ()
  "The initializationOptions: (:gemmaLsp SETTINGS).
The same object is sent as didChangeConfiguration settings."
  (list :gemmaLsp (gemma-lsp-settings)))

(defun gemma-lsp-settings-json ()
  "The initializationOptions as a JSON string, as eglot and lsp-mode send them."
  (let ((json-object-type 'plist)
        (json-null nil)
        (json-encoding-pretty-print nil))
    (json-encode (gemma-lsp-initialization-options))))

;;;; Timeouts

(defvar jsonrpc-default-request-timeout)
(defvar lsp-response-timeout)

(defun gemma-lsp--raise-timeout (var)
  "Set VAR to `gemma-lsp-request-timeout' if that is longer."
  (when (and gemma-lsp-request-timeout (boundp var)
             (numberp (symbol-value var))
             (< (symbol-value var) gemma-lsp-request-timeout))
    (set var gemma-lsp-request-timeout)))

(with-eval-after-load 'jsonrpc
  (gemma-lsp--raise-timeout 'jsonrpc-default-request-timeout))
(with-eval-after-load 'lsp-mode
  (gemma-lsp--raise-timeout 'lsp-response-timeout))

;;;; eglot

(defvar eglot-server-programs)
(declare-function eglot-current-server "eglot")
(declare-function jsonrpc-request "jsonrpc")
(declare-function jsonrpc-notify "jsonrpc")

(defun gemma-lsp-eglot-contact (&rest _)
  "Contact for `eglot-server-programs': the command and initializationOptions."
  (append gemma-lsp-command
          (list :initializationOptions (gemma-lsp-initialization-options))))

(defun gemma-lsp-eglot-register ()
  "Add gemma-lsp to `eglot-server-programs'.
Where it goes is `gemma-lsp-eglot-placement'."
  (when (and gemma-lsp-eglot-placement (boundp 'eglot-server-programs))
    (let ((entry (cons gemma-lsp-major-modes #'gemma-lsp-eglot-contact)))
      (setq eglot-server-programs
            (seq-remove (lambda (e) (eq (cdr-safe e) #'gemma-lsp-eglot-contact))
                        eglot-server-programs))
      (add-to-list 'eglot-server-programs entry
                   (eq gemma-lsp-eglot-placement 'append)))))

(with-eval-after-load 'eglot
  (gemma-lsp-eglot-register))

;;;; lsp-mode

(defvar lsp--cur-workspace)
(declare-function lsp-register-client "lsp-mode")
(declare-function make-lsp-client "lsp-mode")
(declare-function lsp-stdio-connection "lsp-mode")
(declare-function lsp-find-workspace "lsp-mode")
(declare-function lsp-request "lsp-mode")
(declare-function lsp-notify "lsp-mode")

(defun gemma-lsp--lsp-mode-activate-p (_file-name mode)
  "Non-nil when gemma-lsp should start for a buffer in MODE."
  (apply #'provided-mode-derived-p mode gemma-lsp-major-modes))

(defun gemma-lsp-lsp-mode-register ()
  "Register gemma-lsp as an lsp-mode add-on client."
  (lsp-register-client
   (make-lsp-client
    :new-connection (lsp-stdio-connection (lambda () gemma-lsp-command))
    :activation-fn #'gemma-lsp--lsp-mode-activate-p
    :add-on? t
    :priority gemma-lsp-lsp-mode-priority
    :server-id 'gemma-lsp
    :initialization-options #'gemma-lsp-initialization-options)))

(with-eval-after-load 'lsp-mode
  (gemma-lsp-lsp-mode-register))

;;;; Commands

(defun gemma-lsp--percent (part whole)
  "PART of WHOLE as \"72%\", or \"-\" when WHOLE is 0."
  (if (and (numberp whole) (> whole 0) (numberp part))
      (format "%d%%" (round (* 100.0 (/ (float part) whole))))
    "-"))

(defun gemma-lsp--ms (v)
  "V milliseconds as text."
  (if (numberp v) (format "%d ms" (round v)) "-"))

(defun gemma-lsp-format-stats (stats)
  "Format STATS, the plist answer of gemma/stats, on one line."
  (let ((get (lambda (k) (or (plist-get stats k) 0)))
        (lat (plist-get stats :latency_ms)))
    (format (concat "gemma-lsp: %d completions, acceptance %s (%d/%d), "
                    "reuse %s (%d/%d), latency p50 %s p95 %s last %s")
            (funcall get :completions)
            (gemma-lsp--percent (funcall get :accepted) (funcall get :drafted))
            (funcall get :accepted) (funcall get :drafted)
            (gemma-lsp--percent (funcall get :reused_tokens)
                                (funcall get :prompt_tokens))
            (funcall get :reused_tokens) (funcall get :prompt_tokens)
            (gemma-lsp--ms (plist-get lat :p50))
            (gemma-lsp--ms (plist-get lat :p95))
            (gemma-lsp--ms (plist-get lat :last)))))

(defun gemma-lsp--lsp-mode-workspace ()
  "The gemma-lsp lsp-mode workspace of the current buffer, or nil."
  (and (bound-and-true-p lsp-mode)
       (fboundp 'lsp-find-workspace)
       (lsp-find-workspace 'gemma-lsp (buffer-file-name))))

(defun gemma-lsp--eglot-server ()
  "The eglot server of the current buffer, or nil."
  (and (fboundp 'eglot-current-server)
       (eglot-current-server)))

(defun gemma-lsp--as-plist (obj)
  "OBJ as a plist (lsp-mode may give hash tables)."
  (if (hash-table-p obj)
      (let (out)
        (maphash (lambda (k v)
                   (setq out (append out (list (intern (concat ":" k))
                                               (gemma-lsp--as-plist v)))))
                 obj)
        out)
    obj))

(defun gemma-lsp-stats ()
  "Show the server's cumulative counters (gemma/stats)."
  (interactive)
  (let ((stats
         (cond
          ((gemma-lsp--lsp-mode-workspace)
           (let ((lsp--cur-workspace (gemma-lsp--lsp-mode-workspace)))
             (lsp-request "gemma/stats" nil)))
          ((gemma-lsp--eglot-server)
           (jsonrpc-request (gemma-lsp--eglot-server) :gemma/stats nil))
          (t (user-error "No gemma-lsp server in this buffer")))))
    (message "%s" (gemma-lsp-format-stats (gemma-lsp--as-plist stats)))))

(defun gemma-lsp-update-settings ()
  "Send the current settings to this buffer's server (didChangeConfiguration)."
  (interactive)
  (let ((params (list :settings (gemma-lsp-initialization-options))))
    (cond
     ((gemma-lsp--lsp-mode-workspace)
      (let ((lsp--cur-workspace (gemma-lsp--lsp-mode-workspace)))
        (lsp-notify "workspace/didChangeConfiguration" params)))
     ((gemma-lsp--eglot-server)
      (jsonrpc-notify (gemma-lsp--eglot-server)
                      :workspace/didChangeConfiguration params))
     (t (user-error "No gemma-lsp server in this buffer")))
    (message "gemma-lsp: settings sent")))

(provide 'gemma-lsp)
;;; gemma-lsp.el ends here
