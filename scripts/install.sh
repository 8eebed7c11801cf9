#!/usr/bin/env bash
# Install torchbayesian from this clone into ./.venv, with the system packages it needs.
#
#   scripts/install.sh            everything the test suite needs (the [test] extra, Chromium, its driver)
#   scripts/install.sh examples   what examples/ needs (the [examples] extra)
#
# On a Debian-like system, missing system packages are installed with apt-get (through sudo when not
# root, after apt-get update): python3-venv; a C compiler and the Python headers (torchbayesian's
# fused CPU kernels); for the test suite, chromium and chromium-driver (the docs browser test).
# Elsewhere the script says what to install.
# torch==2.13.0 is installed first and kept pinned, so pip never resolves a newer, CUDA-sized torch.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="${1:-test}"
case "$extra" in
    test | examples) ;;
    *) echo "usage: scripts/install.sh [test|examples]" >&2; exit 2 ;;
esac

have() { command -v "$1" >/dev/null 2>&1; }
packages=()
have python3 || packages+=(python3)
{ have python3 && python3 -c "import ensurepip, venv" 2>/dev/null; } || packages+=(python3-venv)
have "${CC:-cc}" || packages+=(gcc libc6-dev)
python_h='import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))'
{ have python3 && python3 -c "$python_h" 2>/dev/null; } || packages+=(python3-dev)
if [ "$extra" = test ]; then
    have "${CHROMIUM:-chromium}" || have chromium-browser || have google-chrome || packages+=(chromium)
    have "${CHROMEDRIVER:-chromedriver}" || packages+=(chromium-driver)
fi

if [ "${#packages[@]}" -gt 0 ]; then
    echo "installing system packages: ${packages[*]}"
    if ! have apt-get; then
        echo "no apt-get here: install ${packages[*]} with your package manager, then rerun." >&2
        exit 1
    fi
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif have sudo; then
        as_root=(sudo)
    else
        echo "not root and no sudo: install ${packages[*]} as root, then rerun." >&2
        exit 1
    fi
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
echo "installing torch==2.13.0 and torchbayesian[$extra] into .venv"
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e ".[$extra]" torch==2.13.0
