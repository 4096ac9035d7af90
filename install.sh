#!/usr/bin/env bash
# One command installs everything a checkout needs: a virtual environment in .venv with the
# package, its embedded engine (moshi, torch) and the dev tools, plus the Debian tools the
# synthetic call corpus is made with (espeak-ng, sox) and the container image is built with
# (podman, runc, debootstrap) when they are missing and apt is usable.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: Python >= 3.11 is needed; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

# Debian tools: espeak-ng and sox make the synthetic call corpus; podman, runc and
# debootstrap build and run the container image (deploy/build-image.sh, its test); the
# libopus0 library is serve's Opus encoder.
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
# libopus0: serve's Opus encoder (ADR 0165); without it serve encodes through sphn.
ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0' || need+=(libopus0)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing ${need[*]} (corpus generator, container image, Opus encoder)" >&2
        apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "install.sh: ${need[*]} not found: 'voice-server-moshi make-corpus' needs" \
             "espeak-ng and sox, deploy/build-image.sh podman, runc and debootstrap;" \
             "without libopus0 serve encodes Opus through sphn, at about twice the CPU" \
             "(apt-get install ...). Everything else works without." >&2
    fi
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# LiveKit's own PersonaPlex client (livekit-plugins-nvidia), a real peer for `serve` in the
# tests. Its package also pulls NVIDIA's Riva client, which pins websockets<16 for Riva's
# own streaming code (the PersonaPlex client speaks through aiohttp); --no-deps keeps the
# websockets this project is tested on. Dev only: the package never imports either.
.venv/bin/python -m pip install -q --no-deps "livekit-plugins-nvidia==1.8.9" "nvidia-riva-client==2.28.0"
echo "install.sh: done. Try: .venv/bin/voice-server-moshi call" >&2
