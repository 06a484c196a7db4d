#!/usr/bin/env bash
# The recipes on a GPU (width 1.0, bf16): held-out checks of fast's knobs (data.val_size=5000, no
# test), then experiment=fast and experiment=fast_best over three seeds each (test accuracy and fit
# time), then benchmarks/accuracy.py on fast (project against a plain loop, three seeds). Each
# stage is skipped when too little of BUDGET is left.
# On the GPU machine, from the project's root:
#   source .device/gpu-env.sh && OUT=/tmp/res bash benchmarks/gpu_recipes.sh | tee /tmp/res/gpu.log
# A CPU dry run:
#   OUT=/tmp/dry DATA=... TRAINER="trainer=cpu model.net.width=0.125 data.subset=1024 data.test_subset=512 trainer.max_epochs=6 model.scheduler.peak_epoch=1" BUDGET=300 bash benchmarks/gpu_recipes.sh
TRAINER=${TRAINER:-trainer=gpu}
SEEDS=${SEEDS:-0 1 2}
source "$(dirname "$0")/stages.sh"

train() {  # train NAME NEEDED_SECONDS OVERRIDES...: one run; its metrics.json lands in $OUT/NAME.json
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 src/train.py "$@" $TRAINER "${common[@]}" 2>&1 | tr '\r' '\n' | grep -E "error|Error" | tail -n 5
  local run; run=$(ls -td "$work"/logs/train/runs/* | head -n 1)
  cp "$run/metrics.json" "$OUT/$name.json"
  python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print({k: m.get(k) for k in ("status", "val/acc", "test/acc", "fit_time_s", "device")})' "$OUT/$name.json"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
heldout=(data.val_size=5000 test=false analysis.enabled=false)
train heldout_fast 40 experiment=fast "${heldout[@]}"
train heldout_fast_tta 40 experiment=fast "${heldout[@]}" model.tta=flip
train heldout_fast_tta_ls 40 experiment=fast "${heldout[@]}" model.tta=flip model.label_smoothing=0.2
train heldout_fast_tta_ema 40 experiment=fast "${heldout[@]}" model.tta=flip callbacks=ema
for lr in 0.2 0.8; do train "heldout_fast_tta_lr$lr" 40 experiment=fast "${heldout[@]}" model.tta=flip model.scheduler.max_lr=$lr; done
for recipe in fast fast_best; do
  for seed in $SEEDS; do train "${recipe}_seed$seed" 40 experiment=$recipe seed=$seed; done
done
if fits accuracy_fast 150; then
  timeout $(( $(left) - 5 )) python3 benchmarks/accuracy.py --seeds "${SEEDS// /,}" --json "$OUT/accuracy_fast.json" \
    experiment=fast $TRAINER "${common[@]}" 2>&1 | grep -E '"(test_acc_mean|test_acc_std|fit_time_s_mean|accuracy_project_minus_plain|speed_project_over_plain)"|Error|error'
fi
echo "== done in $SECONDS s"
