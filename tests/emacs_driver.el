;;; emacs_driver.el --- Drive a real interactive Emacs like a user, for tests/test_emacs_e2e.py -*- lexical-binding: t; -*-

;; Loaded with `emacs -nw -l emacs_driver.el' in a pseudo-terminal, in a fresh HOME whose
;; init file holds what editors/emacs/README.md tells a user to write (the test writes
;; it); package.el activates Debian's elpa-* packages as in a user's Emacs.  The
;; parameters come as JSON in $GEMMA_DRIVER_PARAMS.  The rest are the README's steps:
;; open the file, M-x eglot or M-x lsp, ask for a completion with C-M-i
;; (completion-at-point) or M-x company-complete, and accept it.  Keys go through `unread-command-events', so
;; Emacs's own command loop runs them (post-command hooks, the minibuffer, company's
;; popup) exactly as when typed.  Timers do the waiting, so process output keeps flowing.
;; The result (the hole's line, the buffer saved to disk, *Messages*) goes to a JSON file.

;;; Code:

(require 'json)

(defvar drv-params (let ((json-object-type 'alist) (json-key-type 'symbol))
                     (json-read-from-string (getenv "GEMMA_DRIVER_PARAMS"))))
(defun drv-param (key) (alist-get key drv-params))

(defvar drv-t0 (float-time))
(defvar drv-steps nil)
(defvar drv-buffer nil)

(defun drv-elapsed () (- (float-time) drv-t0))
(defun drv-step (fmt &rest args)
  (push (format "%.1fs %s" (drv-elapsed) (apply #'format fmt args)) drv-steps))

(defun drv-finish (status)
  "Write the result file and leave Emacs."
  (let ((result
         `((status . ,status)
           (steps . ,(vconcat (reverse drv-steps)))
           (line . ,(if (buffer-live-p drv-buffer)
                        (with-current-buffer drv-buffer
                          (save-excursion
                            (goto-char (point-min))
                            (forward-line (1- (drv-param 'line)))
                            (buffer-substring-no-properties (line-beginning-position)
                                                            (line-end-position))))
                      :json-null))
           (messages . ,(with-current-buffer (messages-buffer) (buffer-string)))
           (events . ,(drv-events)))))
    (with-temp-file (drv-param 'result)
      (insert (json-encode result))))
  (kill-emacs 0))

(defun drv-events ()
  "The client's log of the LSP traffic, for a failure report."
  (let ((buf (pcase (drv-param 'client)
               ("eglot" (and (buffer-live-p drv-buffer) (fboundp 'jsonrpc-events-buffer)
                             (with-current-buffer drv-buffer
                               (let ((server (eglot-current-server)))
                                 (and server (jsonrpc-events-buffer server))))))
               (_ (get-buffer "*lsp-log*")))))
    (if (buffer-live-p buf)
        (with-current-buffer buf
          (buffer-substring-no-properties (max (point-min) (- (point-max) 6000)) (point-max)))
      "")))

(defun drv-keys (keys)
  "Queue KEYS (a `kbd' string) as if typed."
  (setq unread-command-events
        (append unread-command-events (listify-key-sequence (kbd keys)))))

(defun drv-poll (what pred then)
  "Call THEN once PRED holds (checked every 0.2 s); give up with WHAT at the deadline."
  (let ((timer nil))
    (setq timer
          (run-at-time
           0.2 0.2
           (lambda ()
             (condition-case err
                 (cond ((funcall pred) (cancel-timer timer) (funcall then))
                       ((> (drv-elapsed) (drv-param 'deadline_s))
                        (cancel-timer timer) (drv-finish (format "timeout: %s" what))))
               (error (cancel-timer timer)
                      (drv-finish (format "error while %s: %S" what err)))))))))

;; --- beyond the user's init file (written by the test from the README's steps) -------

(setq native-comp-async-report-warnings-errors 'silent) ; no *Warnings* window on top
(when (equal (drv-param 'client) "lsp-mode")
  ;; lsp-mode's own start-up questions, answered the way a user would.
  (setq lsp-session-file (drv-param 'lsp_session)
        lsp-auto-guess-root t                 ; the project is the git repository
        lsp-enable-suggest-server-download nil
        lsp-log-io t                          ; the traffic, for a failure report
        lsp-headerline-breadcrumb-enable nil))
(when (equal (drv-param 'ui) "company")
  (require 'company)
  (global-company-mode 1))

;; --- the session ------------------------------------------------------------------

(defun drv-connected-p ()
  (with-current-buffer drv-buffer
    (pcase (drv-param 'client)
      ("eglot" (and (fboundp 'eglot-current-server) (eglot-current-server)))
      ("lsp-mode" (and (fboundp 'lsp-find-workspace)
                       (let ((ws (lsp-find-workspace 'gemma-lsp (buffer-file-name))))
                         (and ws (eq (lsp--workspace-status ws) 'initialized))))))))

(defun drv-start ()
  (setq drv-buffer (find-file (drv-param 'file)))
  (delete-other-windows)
  (drv-step "opened %s in %s" (drv-param 'file) major-mode)
  (drv-keys (if (equal (drv-param 'client) "eglot") "M-x eglot RET" "M-x lsp RET"))
  (drv-poll "connecting" #'drv-connected-p #'drv-ask))

(defun drv-ask ()
  (drv-step "connected (%s)" (drv-param 'client))
  (switch-to-buffer drv-buffer)
  (goto-char (point-min))
  (forward-line (1- (drv-param 'line)))
  (end-of-line)
  (drv-keys "SPC")                      ; the space after `return', typed
  (if (equal (drv-param 'ui) "company")
      (progn
        ;; One candidate: company-complete inserts it at once (no popup); several: the
        ;; popup shows and RET (company-complete-selection) takes the first.
        (drv-keys "M-x company-complete RET")
        (drv-poll "waiting for company's popup or its insertion"
                  (lambda () (or (drv-line-done-p)
                                 (and (bound-and-true-p company-candidates)
                                      (> (length company-candidates) 0))))
                  (lambda ()
                    (when (bound-and-true-p company-candidates)
                      (drv-step "company shows %d candidate(s)" (length company-candidates))
                      (drv-keys "RET"))
                    (drv-accepted))))
    (drv-keys "C-M-i")                  ; completion-at-point
    (drv-accepted)))

(defun drv-line-done-p ()
  (with-current-buffer drv-buffer
    (save-excursion
      (goto-char (point-min))
      (forward-line (1- (drv-param 'line)))
      (looking-at-p (drv-param 'done_regexp)))))

(defun drv-accepted ()
  (drv-poll "waiting for the completion in the buffer"
            #'drv-line-done-p
            (lambda ()
              (drv-step "completed")
              ;; A moment for a textEdit that lands after the inserted label.
              (run-at-time 1.0 nil
                           (lambda ()
                             (with-current-buffer drv-buffer (save-buffer))
                             (drv-step "saved")
                             (drv-finish "ok"))))))

(run-at-time 0.5 nil (lambda () (condition-case err (drv-start)
                                  (error (drv-finish (format "error at start: %S" err))))))

;;; emacs_driver.el ends here
