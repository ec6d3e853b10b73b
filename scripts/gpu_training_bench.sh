#!/usr/bin/env bash
# The training-throughput measurements of issue 20, each a part that fits one device call
# (10 minutes), before and after in the same run. Run from the repository root on the GPU:
#
#   bash scripts/gpu_training_bench.sh stage1      # step: eager vs CUDA-graphed (+ bf16 heads)
#   bash scripts/gpu_training_bench.sh generator   # procedural: eager vs static vs graphed
#   bash scripts/gpu_training_bench.sh stage2      # stage 2: per-sample vs batched
#   bash scripts/gpu_training_bench.sh numerics    # 200 steps from one seed, eager vs graphed
#
# Outputs go to $OUT (default out/gpu_bench). stage2 needs gsplat and the LPIPS-VGG weights
# on a machine without network: carry gsplat's wheel (and rich, markdown-it-py, mdurl, ninja)
# in .whl/ and an fp16 copy of lpips_vgg.safetensors in .tx/lpips/ (docs/benchmarks.md says
# how to make both); the script installs the wheels into /tmp/site and keeps gsplat's JIT
# build in .tx/torch_ext so a warm machine builds it once.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in stage1|generator|stage2|numerics) ;; *)
  echo "usage: bash scripts/gpu_training_bench.sh stage1|generator|stage2|numerics" >&2; exit 2;;
esac
OUT=${OUT:-out/gpu_bench}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
python3 -c "import torch; print('torch', torch.__version__)"
case "${1:-}" in
  stage1)
    python3 scripts/bench_train.py --config stage1-compact --modes eager graphed --pool 16 \
      --passes 3 --e2e 8 --all-buckets 2>&1 | tee "$OUT/stage1_modes.txt"
    python3 scripts/bench_train.py --config stage1-compact --modes graphed --pool 16 --passes 3 \
      --set model.head_chunk=0 model.fast_heads=true 2>&1 | tee "$OUT/stage1_fast_heads.txt"
    ;;
  generator)
    python3 scripts/bench_procedural.py --modes eager static graphed --sizes 32x8 64x8 \
      --repeats 5 --warmup 2 2>&1 | tee "$OUT/generator_modes.txt"
    python3 -m pytest -q -p no:cacheprovider tests/data/test_procedural_static.py 2>&1 | tail -3
    ;;
  stage2)
    if [ -d .whl ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
      export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    export TORCH_EXTENSIONS_DIR="$PWD/.tx/torch_ext" TORCH_CUDA_ARCH_LIST=9.0
    export DA3GS_LPIPS_DIR=${DA3GS_LPIPS_DIR:-$PWD/.tx/lpips}
    python3 scripts/bench_stage2.py --config stage2-compact --impl old new --pool 8 --passes 3 \
      2>&1 | tee "$OUT/stage2_impls.txt"
    ;;
  numerics)
    common=(schedule.steps=200 schedule.warmup_steps=50 data.batch_size=8 run.log_every=10
            eval.every=0 eval.scenes=4 run.image_every=0 run.ckpt_every=1000
            run.tensorboard=false run.progress=false)
    tag=$(date +%Y%m%d-%H%M%S)  # fresh run folders: nothing existing is touched
    for m in off on; do
      start=$(date +%s)
      python3 -m da3gs.cli train --config stage1-compact --out "runs/numerics_${tag}_$m" \
        "run.graphs=$m" "${common[@]}" > "$OUT/numerics_$m.log" 2>&1 \
        || tail -20 "$OUT/numerics_$m.log"
      echo "run.graphs=$m: $(( $(date +%s) - start )) s"
      cp "runs/numerics_${tag}_$m/metrics.jsonl" "$OUT/numerics_$m.jsonl" 2>/dev/null
    done
    python3 scripts/compare_runs.py "runs/numerics_${tag}_off" "runs/numerics_${tag}_on" \
      --every 2 | tee "$OUT/numerics_compare.txt"
    ;;
esac
