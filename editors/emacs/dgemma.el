;;; dgemma.el --- dgemma-lsp code suggestions through eglot  -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "28.1") (eglot "1.9"))
;; Keywords: tools, languages, convenience

;;; Commentary:

;; Runs the dgemma-lsp language server (a diffusion language model) with eglot:
;;
;;   (add-to-list 'load-path "/path/to/dgemma-lsp/editors/emacs")
;;   (require 'dgemma)
;;   (setq dgemma-settings '(:model "/path/to/checkpoint" :device "cpu"))  ; optional
;;   (dgemma-setup)                         ; registers the server with eglot
;;   (add-hook 'python-mode-hook #'eglot-ensure)
;;
;; eglot has no inline-completion (ghost text) UI, so the server answers ordinary completion
;; instead: `completion-at-point' (C-M-i, or company/corfu) offers the suggestion.  Refactor
;; actions are in `eglot-code-actions'.  Settings go to the server as initializationOptions and
;; answer its `workspace/configuration' request (section "dgemma").
;;
;; eglot runs one server per buffer: in these modes dgemma-lsp replaces another eglot server.

;;; Code:

(require 'cl-lib)
(require 'eglot)
(require 'jsonrpc)

(defgroup dgemma nil
  "Code suggestions from dgemma-lsp through eglot."
  :group 'tools
  :prefix "dgemma-")

(defcustom dgemma-server-command '("dgemma-lsp")
  "Command (program and arguments) that starts the language server."
  :type '(repeat string))

(defcustom dgemma-settings nil
  "The server's `dgemma' settings as a plist.
For example (:model \"/path/to/checkpoint\" :device \"cpu\" :steps 16).
Keys are the server's camelCase names (see the README).
nil = the server's defaults (the embedded model)."
  :type 'plist)

(defcustom dgemma-modes
  '(python-mode python-ts-mode js-mode js-ts-mode js-jsx-mode typescript-mode typescript-ts-mode
    tsx-ts-mode go-mode go-ts-mode rust-mode rust-ts-mode c-mode c-ts-mode c++-mode c++-ts-mode
    java-mode java-ts-mode)
  "Major modes served by dgemma-lsp."
  :type '(repeat symbol))

(defcustom dgemma-action-timeout 180
  "Seconds to wait for a refactor action: the model runs while eglot waits."
  :type 'integer)

(defvar dgemma-status nil
  "The server's last `dgemma/status' notification.
A plist such as (:state \"ready\" :backend ...).")

(defclass eglot-dgemma (eglot-lsp-server) ()
  :documentation "The dgemma-lsp language server.")

(defun dgemma--settings ()
  "The settings to send: `dgemma-settings', or an empty JSON object."
  (or dgemma-settings (make-hash-table)))

(cl-defmethod eglot-initialization-options ((_server eglot-dgemma))
  "Send `dgemma-settings' under `initializationOptions'."
  (list :dgemma (dgemma--settings)))

(cl-defmethod eglot-handle-request
  ((_server eglot-dgemma) (_method (eql workspace/configuration)) &key items)
  "Answer the server's request for the \"dgemma\" section with `dgemma-settings'."
  (let ((others (cl-call-next-method)))
    (apply #'vector
           (cl-loop for item across (vconcat items)
                    for other across (vconcat others)
                    collect (if (equal (plist-get item :section) "dgemma")
                                (dgemma--settings)
                              other)))))

(cl-defmethod eglot-handle-notification
  ((_server eglot-dgemma) (_method (eql dgemma/status)) &rest params)
  "Keep the server's status; say when the model is ready or failed."
  (let ((previous (plist-get dgemma-status :state)))
    (setq dgemma-status params)
    (let ((state (plist-get params :state)))
      (unless (equal state previous)
        (pcase state
          ("ready" (message "dgemma: model ready (%s)" (plist-get params :backend)))
          ("failed" (message "dgemma: the model could not be loaded: %s" (plist-get params :error))))))))

(cl-defmethod eglot-handle-request
  ((_server eglot-dgemma) (_method (eql workspace/applyEdit)) &key label edit)
  "Apply the edit of a refactor action the user just chose without asking again.
The server labels those edits \"dgemma\"; others follow
`eglot-confirm-server-initiated-edits'."
  (eglot--apply-workspace-edit
   edit (and (not (equal label "dgemma")) eglot-confirm-server-initiated-edits))
  `(:applied t))

(cl-defmethod eglot-execute-command ((server eglot-dgemma) command arguments)
  "Run COMMAND with a timeout long enough for a refactor action."
  (jsonrpc-request server :workspace/executeCommand
                   `(:command ,(format "%s" command) :arguments ,arguments)
                   :timeout dgemma-action-timeout))

(defun dgemma--server ()
  "The dgemma server of the current buffer, or an error."
  (let ((server (eglot-current-server)))
    (unless (and server (cl-typep server 'eglot-dgemma))
      (user-error "No dgemma-lsp server for this buffer (M-x eglot)"))
    server))

(defun dgemma-show-status ()
  "Show what the server reports about itself."
  (interactive)
  (let ((status (jsonrpc-request (dgemma--server) :workspace/executeCommand '(:command "dgemma.status"))))
    (message "dgemma: %s" (or (plist-get status :state) status))
    status))

(defun dgemma-toggle (&optional enable)
  "Turn suggestions off or on (the server setting `enabled').
With ENABLE non-nil, turn them on; with a symbol `off', turn them off."
  (interactive)
  (let* ((current (not (eq (plist-get dgemma-settings :enabled) :json-false)))
         (on (cond ((eq enable 'off) nil) (enable t) (t (not current)))))
    (setq dgemma-settings (plist-put (copy-sequence dgemma-settings) :enabled (if on t :json-false)))
    (let ((server (eglot-current-server)))
      (when (cl-typep server 'eglot-dgemma)
        (jsonrpc-notify server :workspace/didChangeConfiguration
                        (list :settings (list :dgemma (dgemma--settings))))))
    (message "dgemma: suggestions %s" (if on "on" "off"))))

(defun dgemma--contact (&optional _interactive)
  "How eglot starts the server (read when it connects, so later changes count)."
  (cons 'eglot-dgemma dgemma-server-command))

;;;###autoload
(defun dgemma-setup ()
  "Register dgemma-lsp with eglot for `dgemma-modes', ahead of other servers."
  (setq eglot-server-programs
        (cons (cons dgemma-modes #'dgemma--contact)
              (cl-remove-if (lambda (entry) (eq (cdr entry) #'dgemma--contact)) eglot-server-programs))))

(provide 'dgemma)
;;; dgemma.el ends here
