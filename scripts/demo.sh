#!/usr/bin/env bash
# Set up .venv if needed, then run the main job on the bundled example scene:
#   da3gs render --views examples/toy_scene --out out/toy_scene
# The default model is the published DA3-GIANT-1.1 (with a Gaussian head), fetched once from the
# Hugging Face hub. Set DA3GS_MODEL to use another model (a repo id, folder or checkpoint).
# Offline and without a cached model, it says so and runs the pipeline with random weights
# (the outputs are then not meaningful, but every file is produced).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
. .venv/bin/activate
MODEL=${DA3GS_MODEL:-depth-anything/DA3-GIANT-1.1}
da3gs render --views examples/toy_scene --out out/toy_scene --overwrite --process-res 252 --frames 60 --model "$MODEL" "$@"
rc=$?
if [ $rc -eq 2 ] && [ -z "${DA3GS_MODEL:-}" ]; then
    echo "demo: could not load $MODEL (offline?); running with random weights (random:tiny-gs)" >&2
    da3gs render --views examples/toy_scene --out out/toy_scene --overwrite --process-res 252 --frames 60 --model random:tiny-gs "$@"
    rc=$?
fi
[ $rc -eq 0 ] && echo "demo: outputs in out/toy_scene (gaussians.ply, video.mp4, depth/, cameras.json, transforms.json, colmap/)"
exit $rc
