#!/usr/bin/env bash
# Run every editor test, in the real editors, against the real dgemma-lsp; print a summary.
#
#   editors/tests/run-all.sh [--install]
#
#   --install   first run editors/tests/install-tools.sh (Neovim 0.12 from Debian sid, node 24,
#               code-server 4.139.1, chromium, emacs + eglot, npm deps; idempotent, cached in
#               .editor-tools/; ~3 min and ~1.2 GB the first time).
#
# A test whose tool is missing is reported SKIP, not FAIL. The model is DGEMMA_TEST_MODEL
# (see tests/editors/models.py): the embedded model when installed, else a tiny random one.
# Exit status: 0 when nothing failed.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY=${DGEMMA_PYTHON:-$REPO/.venv/bin/python}
export DGEMMA_PYTHON=$PY

if [ "${1:-}" = "--install" ]; then
    editors/tests/install-tools.sh all || { echo "install-tools.sh failed" >&2; exit 1; }
fi

LOGS=${DGEMMA_EDITOR_TOOLS:-$REPO/.editor-tools}/logs
mkdir -p "$LOGS"
results=()
failed=0

# run NAME COMMAND...: pytest's exit 0 with only skips, or exit 77, counts as SKIP.
run() {
    local name=$1; shift
    local log=$LOGS/$name.log
    local start end status verdict
    start=$(date +%s%N)
    "$@" >"$log" 2>&1
    status=$?
    end=$(date +%s%N)
    if [ $status -eq 77 ] || { [ $status -eq 0 ] && grep -qE '^[0-9]+ skipped' "$log"; }; then
        verdict=SKIP
    elif [ $status -eq 0 ]; then
        verdict=PASS
    else
        verdict=FAIL
        failed=$((failed + 1))
    fi
    local ms=$(( (end - start) / 1000000 ))
    results+=("$(printf '%-20s %-5s %4d.%01ds   %s' "$name" "$verdict" $((ms / 1000)) $((ms % 1000 / 100)) "$log")")
    printf '%s\n' "${results[-1]}"
    if [ "$verdict" = FAIL ]; then tail -n 30 "$log" | sed 's/^/    /'; fi
    if [ "$verdict" = SKIP ]; then grep -hE 'SKIP' "$log" | tail -n 2 | sed 's/^/    /'; fi
}

pytest_one() { "$PY" -m pytest -q -rs -p no:cacheprovider "$@"; }

run settings-contract   pytest_one tests/editors/test_settings_contract.py
run neovim-0.11         pytest_one tests/editors/test_neovim011.py
run neovim-0.12         pytest_one tests/editors/test_neovim012.py
run neovim-install      pytest_one tests/editors/test_neovim_install.py
run emacs-eglot         pytest_one tests/editors/test_emacs.py
run vscode-extension    pytest_one tests/editors/test_vscode.py -k "not end_to_end"
run vscode-e2e          bash editors/vscode/e2e/run-e2e.sh
run vscode-self-install bash editors/vscode/e2e/run-e2e.sh --self-install

echo
echo "editor tests: $failed failed (logs in $LOGS)"
[ -f "${DGEMMA_EDITOR_TOOLS:-$REPO/.editor-tools}/vscode-e2e/screenshots/1-ghost-text.png" ] \
    && echo "VS Code screenshots: ${DGEMMA_EDITOR_TOOLS:-$REPO/.editor-tools}/vscode-e2e/screenshots/"
[ $failed -eq 0 ]
