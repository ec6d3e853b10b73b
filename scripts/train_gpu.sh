#!/usr/bin/env bash
# Resumable training on a GPU machine in short calls: every call continues the run in
# runs/<config> from its newest checkpoint and stops cleanly (with a checkpoint) before MINUTES.
#
#   scripts/train_gpu.sh [CONFIG] [MINUTES] [key=value ...]
#     CONFIG   config preset or YAML (default stage1-compact)
#     MINUTES  time limit of this call, set-up included (default 8); only a number is taken as
#              MINUTES, so key=value overrides may follow CONFIG directly
#   env: RUN=folder (default runs/<CONFIG>), NGPU=n (default: all visible GPUs; >1 uses torchrun),
#        OUT=folder (copy metrics, images, TensorBoard events there; FETCH_MODEL=1 adds the
#        newest checkpoint's model.safetensors + config.json),
#        EVAL_ONLY=1 [CKPT=runs/<CONFIG>]: no training, held-out metrics as JSON (MINUTES unused)
#        GATE=1 (with OUT): after training, the ship gate on the run's newest checkpoint
#          (scripts/gate.py): $OUT/gate.json and the candidate as an fp16 model folder,
#          $OUT/candidate (15.7 MB), for scripts/ship_model.py --report on the home machine;
#          the real scenes must be there (carry runs/eval_data). GATE=export: only the fp16
#          candidate (gated on the home machine). docs/training.md, "Campaign".
#        GATE_ONLY=1 [CKPT=run or checkpoint, default RUN]: no training, only the gate
#          (with OUT: $OUT/cand_gpu and $OUT/gate.json); extra arguments go to scripts/gate.py.
# Stage 2 and the gate render with gsplat: without it importable, the wheels in .whl/ (gsplat,
# ninja, rich, markdown-it-py, mdurl; carry .whl) are installed into /tmp/site, and its JIT
# build is kept in .tx/torch_ext (TORCH_EXTENSIONS_DIR) so a warm machine builds it once;
# .tx/lpips (an fp16 lpips_vgg.safetensors) is used as DA3GS_LPIPS_DIR when present.
# Real held-out scenes are added when runs/eval_data, shared/data or ../shared/data holds them.
# A slim copy (20 MB) to carry to a machine without ../shared:
#   mkdir -p runs/eval_data/llff_fern runs/eval_data/lego_400
#   cp -r ../shared/data/llff_fern/{images_8,poses_bounds.npy} runs/eval_data/llff_fern/
#   cp -r ../shared/data/lego_400/{train,transforms_train.json} runs/eval_data/lego_400/
#   cp -r ../shared/data/icl_nuim_livingroom_rgbd5 runs/eval_data/
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
CONFIG=${1:-stage1-compact}; [ $# -gt 0 ] && shift
MINUTES=8  # only a number is MINUTES: `EVAL_ONLY=1 scripts/train_gpu.sh CONFIG model.init=X`
if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then MINUTES=$1; shift; fi
RUN=${RUN:-runs/$(basename "$CONFIG" .yaml)}
if [ -d .whl ] && ! python -c 'import gsplat' >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.tx/torch_ext}
[ -d .tx/lpips ] && export DA3GS_LPIPS_DIR=${DA3GS_LPIPS_DIR:-$PWD/.tx/lpips}
NGPU=${NGPU:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}
REAL=()
for d in runs/eval_data shared/data ../shared/data; do
  if [ -d "$d/llff_fern" ]; then
    REAL=("eval.real=[{path: $d/llff_fern, factor: 8}, $d/lego_400, $d/icl_nuim_livingroom_rgbd5]")
    break
  fi
done
if [ "${GATE_ONLY:-0}" = 1 ]; then  # exit status 0 ship, 1 don't ship, 2 error
  python scripts/gate.py "${CKPT:-$RUN}" ${OUT:+--export "$OUT/cand_gpu" --out "$OUT/gate.json"} \
    "$@"
  exit $?
fi
if [ "$NGPU" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nproc_per_node "$NGPU" -m da3gs.cli)
else
  LAUNCH=(python -m da3gs.cli)
fi
if [ "${EVAL_ONLY:-0}" = 1 ]; then  # held-out metrics of CKPT (a run folder, a checkpoint, any
  # load_model source) or, without CKPT, of the config's untrained initialisation
  dest=${OUT:-runs}/eval_$(basename "${CKPT:-untrained}").json
  python -m da3gs.cli train --config "$CONFIG" --eval-only ${CKPT:+--checkpoint "$CKPT"} \
    --eval-out "$dest" ${REAL[@]+"${REAL[@]}"} "$@"
  exit $?
fi
status=0
"${LAUNCH[@]}" train --config "$CONFIG" --out "$RUN" --resume --max-minutes "$MINUTES" \
  ${REAL[@]+"${REAL[@]}"} "$@" || status=$?
if [ -n "${OUT:-}" ] && [ -d "$RUN" ]; then
  mkdir -p "$OUT/run"
  for f in metrics.jsonl config.yaml images tb; do
    [ -e "$RUN/$f" ] && cp -r "$RUN/$f" "$OUT/run/"
  done
  ck=$(ls -d "$RUN"/checkpoints/step_* 2>/dev/null | tail -1 || true)
  if [ -n "$ck" ] && [ "${FETCH_MODEL:-0}" = 1 ]; then
    mkdir -p "$OUT/model" && cp "$ck/model.safetensors" "$ck/config.json" "$OUT/model/"
  fi
  echo "newest checkpoint: ${ck:-none}"
  if [ -n "$ck" ] && [ "${GATE:-0}" != 0 ]; then  # exit 1 = "don't ship", not a failure
    gate=0
    if [ "$GATE" = export ]; then
      python scripts/gate.py "$RUN" --export "$OUT/candidate" --export-only || gate=$?
    else
      python scripts/gate.py "$RUN" --export "$OUT/candidate" --out "$OUT/gate.json" || gate=$?
    fi
    echo "gate exit status: $gate (0 ship, 1 don't ship, 2 error)"
  fi
fi
exit $status
