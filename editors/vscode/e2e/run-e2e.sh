#!/usr/bin/env bash
# The dgemma extension in real VS Code: code-server 4.139.1 (= VS Code 1.139.1) in headless
# Chromium, driven by puppeteer-core, against the real dgemma-lsp.
#
#   editors/vscode/e2e/run-e2e.sh                 (exit 0 pass, 1 fail, 77 skipped: tools missing)
#   editors/vscode/e2e/run-e2e.sh --self-install  the same from a clean profile with no server set:
#                                                 the extension installs its own (venv in its global
#                                                 storage, torch==2.13.0 and the wheel in the .vsix)
#
# Needs: editors/tests/install-tools.sh vscode code-server chromium. The model comes from
# DGEMMA_TEST_MODEL (see tests/editors/models.py). It packages the extension (npm ci, vsce
# package), installs the .vsix into a fresh code-server profile, starts code-server on a free
# loopback port, runs vscode-e2e.mjs, and stops code-server's whole process group.
# Screenshots: $DGEMMA_EDITOR_TOOLS/vscode-e2e/screenshots (default .editor-tools/...).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../../.." && pwd)
TOOLS=${DGEMMA_EDITOR_TOOLS:-$REPO/.editor-tools}
EXT=$REPO/editors/vscode
E2E=$EXT/e2e
PY=${DGEMMA_PYTHON:-$REPO/.venv/bin/python}
NODE24_BIN=$TOOLS/node24/node_modules/.bin
CODE_SERVER=$TOOLS/code-server/node_modules/.bin/code-server
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
SELF_INSTALL=0
[ "${1:-}" = "--self-install" ] && SELF_INSTALL=1
# (a short name: Chromium's socket path under $RUN/home/tmp must stay under 108 bytes)
RUN=$TOOLS/$([ $SELF_INSTALL = 1 ] && echo vscode-si || echo vscode-e2e)

skip() { echo "SKIP vscode-e2e: $*" >&2; exit 77; }
[ -x "$PY" ] || skip "no Python with dgemma-lsp at $PY (python3 -m venv .venv && .venv/bin/pip install -e '.[test]')"
[ -x "$(dirname "$PY")/dgemma-lsp" ] || skip "no dgemma-lsp next to $PY"
[ -x "$NODE24_BIN/node" ] || skip "no node 24 (editors/tests/install-tools.sh code-server)"
[ -x "$CODE_SERVER" ] || skip "no code-server (editors/tests/install-tools.sh code-server)"
[ -n "$CHROMIUM" ] || skip "no chromium (editors/tests/install-tools.sh chromium)"
[ -d "$E2E/node_modules/puppeteer-core" ] || skip "no puppeteer-core (editors/tests/install-tools.sh vscode)"
[ -d "$EXT/node_modules/vscode-languageclient" ] || skip "extension deps missing (editors/tests/install-tools.sh vscode)"

rm -rf "$RUN/ws" "$RUN/data" "$RUN/ext" "$RUN/home" "$RUN/screenshots" "$RUN/logs"
mkdir -p "$RUN/ws" "$RUN/data/User" "$RUN/ext" "$RUN/home/config" "$RUN/home/data" "$RUN/home/tmp" \
    "$RUN/screenshots" "$RUN/logs"

# 1. Package the extension exactly as a user would (the server wheel built with $PY), and install
#    the .vsix.
(cd "$EXT" && DGEMMA_PYTHON=$PY npx vsce package --out "$RUN/dgemma.vsix" >"$RUN/logs/vsce.log" 2>&1) \
    || { cat "$RUN/logs/vsce.log"; echo "FAIL: vsce package"; exit 1; }
export HF_HUB_OFFLINE=1
if [ $SELF_INSTALL = 1 ]; then
    # The server is the one the extension installs from its wheel: nothing of this checkout's.
    unset PYTHONPATH VIRTUAL_ENV
else
    # The server runs this checkout's code (as the pytest editor tests do).
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
export XDG_CONFIG_HOME=$RUN/home/config XDG_DATA_HOME=$RUN/home/data TMPDIR=$RUN/home/tmp
export PATH=$NODE24_BIN:$PATH
"$CODE_SERVER" --user-data-dir "$RUN/data" --extensions-dir "$RUN/ext" \
    --install-extension "$RUN/dgemma.vsix" --force >"$RUN/logs/install.log" 2>&1 \
    || { cat "$RUN/logs/install.log"; echo "FAIL: installing the vsix"; exit 1; }

# 2. The workspace, the model and the user settings (what a user puts in settings.json).
PLAN=$(cd "$REPO" && "$PY" -m tests.editors.samples "$RUN/ws")
MODEL=$(cd "$REPO" && "$PY" -m tests.editors.models "$TOOLS/vscode-e2e-model")
SERVER_LOG=$RUN/logs/server.log
SERVER=$([ $SELF_INSTALL = 1 ] || echo "$(dirname "$PY")/dgemma-lsp")
"$PY" - "$MODEL" "$SERVER" "$SERVER_LOG" "$RUN/data/User/settings.json" <<'PYEOF'
import json, sys
model, server, log, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
settings = {f"dgemma.{key}": value for key, value in model["settings"].items()}
if server:  # else: no server named, the extension installs its own
    settings["dgemma.server.command"] = server
settings.update({
    # DEBUG makes the server log every message it sends: the test reads its inline items there.
    "dgemma.server.logLevel": "debug",
    "dgemma.server.args": ["--log-file", log],
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
    "editor.suggestOnTriggerCharacters": False,
    "editor.acceptSuggestionOnEnter": "off",
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "security.workspace.trust.enabled": False,
    "extensions.ignoreRecommendations": True,
    "extensions.autoUpdate": False,
    "telemetry.telemetryLevel": "off",
    "files.hotExit": "off",
    "files.autoSave": "off",  # VS Code for the Web saves after a delay by default
    "update.mode": "none",
    "chat.disableAIFeatures": True,
    "git.enabled": False,
    "git.openRepositoryInParentFolders": "never",
})
json.dump(settings, open(out, "w"), indent=2)
PYEOF

# 3. code-server on a free loopback port, in its own process group.
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setsid "$CODE_SERVER" --auth none --bind-addr "127.0.0.1:$PORT" \
    --user-data-dir "$RUN/data" --extensions-dir "$RUN/ext" \
    --disable-telemetry --disable-update-check --disable-workspace-trust \
    --reconnection-grace-time 5 "$RUN/ws" >"$RUN/logs/code-server.log" 2>&1 &
CS_PID=$!
cleanup() {
    kill -- -"$CS_PID" 2>/dev/null || true
    sleep 1
    kill -9 -- -"$CS_PID" 2>/dev/null || true
    wait "$CS_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 240); do
    curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break
    kill -0 "$CS_PID" 2>/dev/null || { cat "$RUN/logs/code-server.log"; echo "FAIL: code-server exited"; exit 1; }
    sleep 0.5
done

# 4. The test itself.
set +e
DGEMMA_E2E_URL="http://127.0.0.1:$PORT/?folder=$RUN/ws" \
DGEMMA_E2E_WS=$RUN/ws DGEMMA_E2E_SHOTS=$RUN/screenshots DGEMMA_E2E_SERVER_LOG=$SERVER_LOG \
DGEMMA_E2E_PYTHON=$PY DGEMMA_E2E_PLAN=$PLAN CHROMIUM=$CHROMIUM DGEMMA_E2E_EXPECT_INSTALL=$SELF_INSTALL \
DGEMMA_E2E_READY_MS=$([ $SELF_INSTALL = 1 ] && echo 1200000 || echo 300000) \
DGEMMA_E2E_MODEL_NAME=$(printf '%s' "$MODEL" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["name"])') \
    timeout $([ $SELF_INSTALL = 1 ] && echo 1500 || echo 600) node "$E2E/vscode-e2e.mjs"
RC=$?
set -e
if [ $RC -eq 0 ] && [ $SELF_INSTALL = 1 ]; then
    # The server that answered is the installed one: the stamp of a finished install, the
    # environment's own dgemma-lsp, and the extension's log naming that Python.
    STORAGE=$RUN/data/User/globalStorage/dgemma.dgemma
    STAMP=$STORAGE/server-env.json
    [ -f "$STAMP" ] || { echo "FAIL: no install stamp $STAMP"; RC=1; }
    "$STORAGE/server-env/bin/dgemma-lsp" --version || { echo "FAIL: no dgemma-lsp in $STORAGE/server-env"; RC=1; }
    # (from $RUN/home, not the checkout: `python -c` imports from its working directory first)
    (cd "$RUN/home" && "$STORAGE/server-env/bin/python" -c 'import engine, torch; assert "server-env" in engine.__file__; print("installed engine:", engine.__file__, "torch", torch.__version__)') \
        || { echo "FAIL: the environment's engine is not its own"; RC=1; }
    grep -rhs "starting the server: $STORAGE/server-env/bin/dgemma-lsp" "$RUN/data/logs" | tail -n 1 \
        || { echo "FAIL: the extension log does not show the installed server starting"; RC=1; }
    [ $RC -eq 0 ] && echo "SELF-INSTALL OK: $(cat "$STAMP" | tr -d '\n ')"
fi
if [ $RC -ne 0 ]; then
    echo "--- last lines of the server log ($SERVER_LOG)"; tail -n 20 "$SERVER_LOG" 2>/dev/null | cut -c1-400
    echo "--- screenshots in $RUN/screenshots"
fi
exit $RC
