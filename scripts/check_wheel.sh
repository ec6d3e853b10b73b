#!/usr/bin/env bash
# Wheel check (CI, after the test suite): is a pip install of the built wheel a complete install?
#
# 1. build the sdist and the wheel (`python -m build --no-isolation`: the test venv already has
#    setuptools>=77 and build from the dev extra, so nothing is downloaded) and fail on any
#    setuptools deprecation warning;
# 2. install the wheel with --no-deps into a FRESH venv outside the clone; its dependencies come from
#    the test venv through a one-line .pth file naming the test venv's site-packages, so torch,
#    gsplat, nerfstudio ... are not reinstalled (minutes, and the network) and the check stays well
#    under CI's budget. A path line in a .pth only appends that folder to sys.path: the .pth files
#    inside it (among them the clone's editable-install hook) are NOT run, so `import da3gs`
#    resolves to the wheel in the fresh venv's own site-packages, which comes first; the script
#    asserts that, and that every requirement in the wheel's metadata is satisfied;
# 3. from a scratch folder outside the clone, with the fresh venv's `da3gs` entry point:
#    --version, fetch (list), train --list-configs (presets are package data), render on generated
#    images with no --model, offline (HF_HUB_OFFLINE=1, an empty HF cache): the bundled "mini"
#    model is package data and the fallback must say so in one line, eval nvs on a generated posed
#    scene with LPIPS (alex; skipped with a note when its weights are not fetched), and
#    `ns-train da3gs --help` when nerfstudio is importable.
# Usage: bash scripts/check_wheel.sh   (uses .venv; creates and removes a temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
TEST_PY="$REPO/.venv/bin/python"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/da3gs-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
step() { echo "[wheel-check $((SECONDS - start))s] $*"; }

step "build sdist + wheel"
"$TEST_PY" -m build --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
if grep -i "deprecat" "$WORK/build.log"; then echo "wheel-check: build warns about deprecations (above)"; exit 1; fi
WHEEL=$(ls "$WORK"/dist/da3gs-*.whl)
ls "$WORK"/dist/da3gs-*.tar.gz >/dev/null
"$TEST_PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["da3gs/py.typed", "da3gs/train/configs/stage1-compact.yaml", "da3gs/apps/fetch.py",
        "da3gs/weights/mini/model.safetensors", "da3gs/weights/mini/config.json"]
missing = [n for n in need if n not in names]
assert not missing and any(n.endswith("/licenses/LICENSE") for n in names), f"wheel lacks {missing or 'LICENSE'}"
EOF

step "install $(basename "$WHEEL") into a fresh venv"
"$TEST_PY" -m venv "$WORK/venv"
SITE=$("$TEST_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
VSITE=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SITE" > "$VSITE/zz_da3gs_test_venv.pth"
"$WORK/venv/bin/python" -m pip install -q --no-deps --disable-pip-version-check "$WHEEL"
unset PYTHONPATH VIRTUAL_ENV
export PATH="$WORK/venv/bin:$PATH" DA3GS_WHEEL_VENV="$WORK/venv"
mkdir "$WORK/scratch" && cd "$WORK/scratch"
python - <<'EOF'
import os, sys
from importlib.metadata import distribution
from packaging.requirements import Requirement
import da3gs
venv = os.path.realpath(os.environ["DA3GS_WHEEL_VENV"])
assert os.path.realpath(da3gs.__file__).startswith(venv), f"da3gs imported from {da3gs.__file__}, not the wheel"
from importlib.metadata import version
bad = []
for r in map(Requirement, distribution("da3gs").requires or []):
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    try:
        v = version(r.name)
    except Exception:
        bad.append(f"{r} (not installed)")
        continue
    if not r.specifier.contains(v, prereleases=True):
        bad.append(f"{r} (have {v})")
assert not bad, f"unsatisfied requirements: {bad}"
EOF
[ "$(command -v da3gs)" = "$WORK/venv/bin/da3gs" ]

step "da3gs --version / fetch / train --list-configs"
da3gs --version
da3gs fetch
configs=$(da3gs train --list-configs)
grep -q stage1-compact <<<"$configs"

step "generate a posed scene (6 views, 64 x 48)"
python - <<'EOF'
import json, math, os
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
H, W, f = 48, 64, 60.0
yy, xx = np.mgrid[0:H, 0:W]
os.makedirs("scene")
frames = []
for i in range(6):
    a = -0.3 + 0.12 * i
    img = np.stack([(xx + 6 * i) % 16 < 8, (yy // 6) % 2, (xx + yy) / (H + W)], -1).astype(np.float32)
    img = (0.6 * img + 0.4 * rng.random((H, W, 3))).clip(0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(f"scene/view_{i:02d}.png")
    c2w = np.eye(4)  # OpenGL convention (nerfstudio): camera looks along -z, at the origin
    c2w[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    c2w[:3, 3] = [2 * math.sin(a), 0, 2 * math.cos(a)]
    frames.append({"file_path": f"view_{i:02d}.png", "transform_matrix": c2w.tolist()})
json.dump({"camera_model": "OPENCV", "fl_x": f, "fl_y": f, "cx": W / 2, "cy": H / 2, "w": W, "h": H,
           "frames": frames}, open("scene/transforms.json", "w"), indent=1)
EOF

step "da3gs render, offline with an empty Hugging Face cache (falls back to the bundled mini)"
HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf" da3gs render --views scene --device cpu --process-res 56 \
    --frames 4 --out out/render 2>"$WORK/render.err" || { cat "$WORK/render.err"; exit 1; }
test -s out/render/gaussians.ply && test -s out/render/summary.json
grep -q "bundled model 'mini'" "$WORK/render.err"
python -c 'import json; assert json.load(open("out/render/summary.json"))["model"] == "mini"' 

LPIPS=alex
if ! python -c 'from da3gs.metrics import load_lpips; load_lpips("alex")' 2>/dev/null; then
    echo "wheel-check: note: LPIPS weights not fetched (da3gs fetch lpips): eval nvs runs with --lpips none"
    LPIPS=none
fi
step "da3gs eval nvs --lpips $LPIPS"
da3gs eval nvs --scene scene --model random:tiny-gs --device cpu --process-res 56 --lpips "$LPIPS" --out out/nvs -q
python - "$LPIPS" <<'EOF'
import json, sys
m = json.load(open("out/nvs/metrics.json"))
text = json.dumps(m)
assert "psnr" in text, "metrics.json has no psnr"
assert sys.argv[1] == "none" or "lpips" in text, "metrics.json has no lpips"
EOF

if python -c 'import nerfstudio' 2>/dev/null; then
    step "ns-train da3gs --help"
    python -c 'import sys; sys.argv = ["ns-train", "da3gs", "--help"]
from nerfstudio.scripts.train import entrypoint
entrypoint()' >"$WORK/ns.log" 2>&1 || { tail -30 "$WORK/ns.log"; exit 1; }
    grep -q "da3gs" "$WORK/ns.log"
else
    echo "wheel-check: note: nerfstudio not importable: ns-train da3gs --help skipped"
fi
step "ok"
