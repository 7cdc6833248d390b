;;; session.el --- drive editors/emacs/dgemma.el in emacs --batch against the real dgemma-lsp  -*- lexical-binding: t; -*-
;; Environment: DGEMMA_TEST_CONFIG (dgemma.el), DGEMMA_TEST_CMD (JSON list), DGEMMA_TEST_SETTINGS
;; (JSON object), DGEMMA_TEST_FILE (file to edit), DGEMMA_TEST_CURSORS (JSON list of
;; {line, character, type}), DGEMMA_TEST_ACTION (JSON {text, line, character, kind}),
;; DGEMMA_TEST_REPORT (JSON report the test asserts on).
;; Run WITHOUT -Q: Debian activates elpa-eglot from site-start.

(require 'json)
(load (getenv "DGEMMA_TEST_CONFIG") nil t)
(require 'python)

(defvar session-report nil)
(defun session-put (key value) (setq session-report (plist-put session-report key value)))
(defun session-save ()
  (with-temp-file (getenv "DGEMMA_TEST_REPORT")
    (insert (json-encode session-report))))
(defun session-json (name) (json-parse-string (getenv name) :object-type 'plist :array-type 'list))

(defun session-goto (line character)
  (goto-char (point-min))
  (forward-line line)
  (forward-char character))

(defun session-line (line)
  (save-excursion
    (goto-char (point-min))
    (forward-line line)
    (buffer-substring-no-properties (line-beginning-position) (line-end-position))))

(condition-case err
    (progn
      (setq dgemma-server-command (session-json "DGEMMA_TEST_CMD"))
      (setq dgemma-settings (json-parse-string (getenv "DGEMMA_TEST_SETTINGS") :object-type 'plist))
      (dgemma-setup)
      (setq eglot-sync-connect 60 eglot-connect-timeout 120)
      (find-file (getenv "DGEMMA_TEST_FILE"))
      (python-mode)
      ;; What `eglot' does interactively: find the contact in eglot-server-programs and connect.
      (let ((guess (eglot--guess-contact)))
        (session-put :class (symbol-name (nth 2 guess)))
        (apply #'eglot guess))
      (let ((server (eglot-current-server)))
        (unless server (error "eglot did not connect"))
        (session-put :connected (cl-typep server 'eglot-dgemma))
        ;; The model loads in the background: poll the server's status command.
        (let ((status nil) (deadline (+ (float-time) 300)))
          (while (and (< (float-time) deadline)
                      (not (member (plist-get status :state) '("ready" "failed"))))
            (setq status (dgemma-show-status))
            (sleep-for 0.2))
          (session-put :status status))
        (accept-process-output nil 0.5)
        (session-put :status_notification dgemma-status)
        ;; 1. Completion (eglot has no inline-completion UI: the server answers completion).
        (let ((original (buffer-string)) (results nil) (accepted nil))
          (dolist (cursor (session-json "DGEMMA_TEST_CURSORS"))
            (let ((line (plist-get cursor :line)) (character (plist-get cursor :character)))
              (session-goto line character)
              (insert (plist-get cursor :type))
              (eglot--signal-textDocument/didChange)  ; eglot's own requests do this first
              (let* ((items (plist-get (jsonrpc-request
                                        server :textDocument/completion
                                        (list :textDocument (eglot--TextDocumentIdentifier)
                                              :position (eglot--pos-to-lsp-position)))
                                       :items))
                     (item (and (> (length items) 0) (elt items 0))))
                (push (list :line line :items (length items)) results)
                (when (and item (not accepted))
                  ;; The user's path: completion-at-point with the sole candidate inserts it.
                  (let ((before (buffer-string)) (before-line (session-line line)))
                    (completion-at-point)
                    (setq accepted (list :line line :item item
                                         :before before-line
                                         :changed (not (equal before (buffer-string)))
                                         :after (session-line line)))))))
            (unless accepted
              (erase-buffer)
              (insert original)))
          (session-put :completion (apply #'vector (nreverse results)))
          (session-put :accepted accepted)
          ;; 2. Suggestions off: nothing offered; on again.
          (when accepted
            (dgemma-toggle 'off)
            (accept-process-output nil 0.5)
            (eglot--signal-textDocument/didChange)
            (session-put :items_when_disabled
                         (length (plist-get (jsonrpc-request
                                             server :textDocument/completion
                                             (list :textDocument (eglot--TextDocumentIdentifier)
                                                   :position (eglot--pos-to-lsp-position)))
                                            :items)))
            (dgemma-toggle t)))
        ;; 3. A refactor action through eglot's own command path, on a complete file.
        (let ((action (session-json "DGEMMA_TEST_ACTION")))
          (erase-buffer)
          (insert (plist-get action :text))
          (session-goto (plist-get action :line) (plist-get action :character))
          (let ((before (buffer-string)))
            (session-put :actions_listed
                         (cl-map 'vector (lambda (a) (list :title (plist-get a :title) :kind (plist-get a :kind)))
                                 (eglot-code-actions (point) (point))))
            (eglot-code-actions (point) (point) (plist-get action :kind) t)
            (session-put :action_applied (not (equal before (buffer-string)))))
          (save-buffer))
        (session-put :messages (with-current-buffer "*Messages*" (buffer-string)))
        (eglot-shutdown server)))
  (error (session-put :error (error-message-string err))))
(session-save)
(set-buffer-modified-p nil)
(kill-emacs (if (plist-get session-report :error) 1 0))
