#!/usr/bin/env bash
# Set up a machine for elastic: Debian packages (when run as root on Debian) and a Python
# virtual environment in .venv with elastic installed in it.
#   scripts/setup.sh            everything
#   ELASTIC_SKIP_APT=1 scripts/setup.sh   only the Python part
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

log() { printf '[setup] %s\n' "$*" >&2; }
t0=$(date +%s)

if [ "${ELASTIC_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
    mapfile -t pkgs < <(grep -v '^\s*#' scripts/debian-packages.txt | grep -v '^\s*$')
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ]; then
            log "missing Debian packages (run as root, or install them): ${missing[*]}"
            exit 1
        fi
        log "installing ${#missing[@]} Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        # gridengine's postinst asks questions; answer them before they are asked
        echo "gridengine-common shared/gridenginemaster string localhost" | debconf-set-selections
        echo "gridengine-common shared/gridenginecell string default" | debconf-set-selections
        echo "gridengine-common shared/gridengineconfig boolean false" | debconf-set-selections
        # no package starts its service (nginx's would listen on :80 for nothing): elastic
        # runs its own nginx per web tier
        guard=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
            guard=/usr/sbin/policy-rc.d
        fi
        trap '[ -z "$guard" ] || rm -f "$guard"' EXIT
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        [ -z "$guard" ] || rm -f "$guard"
        guard=""
        # the lab runs its own libvirtd per host namespace; the system one is not needed
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl disable --now libvirtd >/dev/null 2>&1 || true
        fi
    else
        log "Debian packages: all present"
    fi
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    log "elastic needs Python 3.11 or newer ($PY is $("$PY" -V 2>&1))"; exit 1; }
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
extras="libvirt,lab,cloud,serve,test"
log "installing elastic[$extras] into .venv"
# --no-compile: the .pyc files are written at first import instead (saves ~30 s here)
.venv/bin/python -m pip install -q --no-compile -e ".[$extras]"
log "done in $(( $(date +%s) - t0 )) s; run: .venv/bin/elastic --help"
