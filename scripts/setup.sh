#!/usr/bin/env bash
# Idempotent setup: .venv with the package, Debian's oneDNN linked for Jittor, Chromium for the
# browser test, Jittor's core compiled and verified. Safe to run twice; the second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.aligner-setup-stamp"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

say() { printf '[setup] %s\n' "$*"; }
warn() { printf '\n[setup] WARNING: %s\n\n' "$*" >&2; }

# What a finished setup depends on: if none of these changed, skip straight to the quick check.
fingerprint() {
    cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16
}

jittor_ready() {
    # A stale kernel cache makes Jittor print "please rerun your command" and exit 0: treat as not ready.
    local out
    out="$("$PY" -c 'import jittor_impl.env, jittor; print("JITTOR_OK")' 2>&1)" || return 1
    [[ "$out" == *JITTOR_OK* && "$out" != *"please rerun"* ]]
}

if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$(fingerprint)" ]] && jittor_ready; then
    say "environment up to date (.venv, oneDNN, Jittor core); skipping setup"
    exit 0
fi

START=$(date +%s)

can_apt() { [[ "$(id -u)" == 0 ]] || sudo -n true 2>/dev/null; }
as_root() { if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo -n "$@"; fi; }
APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED == 0 ]]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

# 1. System packages: oneDNN for Jittor's convolutions, Chromium for the report's browser test.
if ! ls /usr/lib/*-linux-gnu/libdnnl.so.2 >/dev/null 2>&1 || [[ ! -f /usr/include/dnnl.h ]]; then
    if can_apt; then
        apt_install libdnnl-dev
    else
        warn "libdnnl-dev is missing and this user cannot run apt-get (not root, no sudo).
         Jittor will fall back to use_mkl=0: its CPU convolutions are ~50x slower and a GOLD-YOLO
         alignment takes minutes instead of seconds. Ask an administrator for: apt-get install libdnnl-dev"
    fi
fi
if [[ ! -x /usr/bin/chromium ]]; then
    if can_apt; then
        apt_install chromium
    else
        warn "chromium is missing and apt-get is not available: the browser test of the HTML report will fail."
    fi
fi

# 2. The virtual environment and the package (torch==2.13.0 comes from the local wheel).
if [[ ! -x "$PY" ]]; then
    say "creating .venv with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
say "installing the package, both frameworks and the test tools into .venv (torch, jittor, numpy<2, ...)"
"$PY" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"$PY" -m pip install -q -e '.[torch,jittor,dev]' 2>&1 | grep -v -e "is ignored" -e "^$" || true
"$PY" -c 'import torch, jittor_utils, numpy, jinja2, click' \
    || { echo "[setup] ERROR: the Python packages did not install (see pip output above)" >&2; exit 2; }

# 3. Link oneDNN where Jittor looks for it, then compile Jittor's core (minutes on first run).
"$PY" -c 'import jittor_impl.env as e, sys; sys.exit(0 if e.link_system_onednn() else 1)' \
    || warn "oneDNN not linked: Jittor falls back to use_mkl=0 (convolutions ~50x slower)."
say "warming up Jittor (the first time compiles its core: about 2-3 minutes on 2 cores)"
for attempt in 1 2 3; do
    if jittor_ready; then break; fi
    say "Jittor asked for a rerun or failed (attempt $attempt); retrying"
    # Show the compile progress on the retry so a long wait is visible.
    "$PY" -c 'import jittor_impl.env, jittor' || true
    if [[ $attempt == 3 ]]; then
        echo "[setup] ERROR: Jittor does not import; run '$PY -c \"import jittor_impl.env, jittor\"' to see why" >&2
        exit 2
    fi
done

# 4. Verify: both frameworks work and agree on a conv (also compiles the smoke-test kernels).
"$PY" -m aligner.doctor || { echo "[setup] ERROR: aligner doctor failed (see above)" >&2; exit 2; }
fingerprint > "$STAMP"
say "setup finished in $(( $(date +%s) - START )) s"
