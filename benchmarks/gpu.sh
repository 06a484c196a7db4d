#!/usr/bin/env bash
# The tests that need a GPU, then the GPU measurements in order of importance, each stage
# skipped when too little time is left: throughput against the plain loop and Lightning's loop
# alone, eager (3 rounds of 8 epochs) and compiled (model.compile=true: CUDA graphs on a GPU); the
# host's own work per step in each path (a null net), on its CPU and on the GPU; the seed's 40
# epochs eager and compiled; where an epoch's time goes, with checkpoints and without (6 epochs
# each); what two background checkpoint writes an epoch cost the loop on the main thread, Lightning's
# way and the project's; the seed's 40 epochs with torch.compile's cudagraphs backend, and its throughput; per
# training step, host syncs, kernel launches and GPU busy time against wall time (and the plain
# loop's step split into augmentation, forward, backward and optimizer), eager and compiled; the
# seed compiled in torch's default mode; the LR range test compiled; the seed in fp32. Eager
# times on a GPU depend on its host's CPU (on an H100 the host bounds the eager step), so the
# host is printed first.
# On the GPU machine, from the project's root:
#   source .device/gpu-env.sh && bash benchmarks/gpu.sh
# Results (JSON) land in $OUT (default gpu-results/); where only a few files may come back:
#   OUT=/tmp/res bash benchmarks/gpu.sh | tee gpu.log; tar -C /tmp/res -czf results.tar.gz .
# A CPU dry run of the same script:
#   OUT=/tmp/dry DATA=... RECIPE="experiment=original data.subset=2048 data.test_subset=1024 model.net.width=0.125 trainer.max_epochs=6 trainer=cpu" BUDGET=600 bash benchmarks/gpu.sh
RECIPE=${RECIPE:-experiment=original trainer=gpu}
BENCH_EPOCHS=${BENCH_EPOCHS:-5}
# Where results go, the data, a scratch dir for runs and caches, and stages that are skipped when
# too little of BUDGET (seconds) is left.
set -uo pipefail
OUT=${OUT:-gpu-results}
DATA=${DATA:-.device/cifar10-jpeg.tar.gz}
BUDGET=${BUDGET:-520}          # seconds the script may use in all
mkdir -p "$OUT"
work=$(mktemp -d)
common=(data.source="$DATA" paths.data_dir="$work/data" paths.log_dir="$work/logs")

left() { echo $((BUDGET - SECONDS)); }

fits() {  # fits NAME NEEDED_SECONDS: announce the stage, or say why it is skipped
  if (( $(left) < $2 )); then echo "== skip $1: $(left) s left"; return 1; fi
  echo "== $1 ($(left) s left)"
}

train() {  # train NAME NEEDED_SECONDS OVERRIDES...
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 src/train.py $RECIPE "${common[@]}" "$@" 2>&1 | tr '\r' '\n' | grep -vE "it/s|^\s*$|warn" | tail -n 12
  local run; run=$(ls -td "$work"/logs/train/runs/* | head -n 1)
  python3 benchmarks/run_summary.py "$run" --json "$OUT/$name.json" | grep -E '"(test/acc|wall_time_s|fit_time_s|epoch_time_s_median|startup_s|device|graphs|graph_breaks|cudagraph_skips)"'
}

bench() {  # bench NAME NEEDED_SECONDS [--bare] OVERRIDES...
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 benchmarks/throughput.py --epochs "$BENCH_EPOCHS" --rounds "${ROUNDS:-1}" --json "$OUT/$name.json" \
    "$@" $RECIPE "${common[@]}" 2>&1 | tr '\r' '\n' | grep -E '"(images_per_s|steady_epoch_s|first_epoch_s|device|graphs|cudagraph_skips)"|Error|error'
  ratios "$OUT/$name.json"
}

ratios() {  # ratios JSON: one line of a throughput.py result: ms a step, the ratios, each round's
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("ms a step", {p: d[p]["step_ms"] for p in ("project", "lightning_bare", "plain") if p in d}, "over plain", d["step_ms_over_plain"], "ratio", d["ratio_project_over_plain"], "rounds", d["ratio_per_round"], "bare", d.get("ratio_bare_over_plain"))' "$1"
}

syncs() {  # syncs NAME NEEDED_SECONDS OVERRIDES...
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 benchmarks/host_syncs.py --json "$OUT/$name.json" $RECIPE "${common[@]}" "$@" 2>&1 \
    | tr '\r' '\n' | grep -E 'Synchronize|_local_scalar_dense|launches|aten_ops|_ms_per_step|host_ms|"(augment|forward|backward|optimizer)"|compiled_graph|"graphs"|"[0-9]+/[0-9]+"|cudagraph|Recompil|- [0-9]+/|fewer than|Error|error'
}

parts() {  # parts NAME NEEDED_SECONDS OVERRIDES...: 6 epochs of the recipe, each epoch's time split (epoch_parts.py)
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  PYTHONPATH=benchmarks${PYTHONPATH:+:$PYTHONPATH} timeout $(( $(left) - 5 )) python3 src/train.py $RECIPE "${common[@]}" \
    trainer.max_epochs=6 test=false +callbacks.epoch_parts._target_=epoch_parts.EpochParts \
    +callbacks.epoch_parts.path="$OUT/$name.json" "$@" 2>&1 | grep -E "Error|error" | tail -n 5
  python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['median_after_first'])" "$OUT/$name.json"
}

hostwork() {  # hostwork NAME NEEDED_SECONDS OVERRIDES...: per step, the host's own work in each path, with a
  # null net and batch 2 (throughput.py --null-net): the work an eager GPU step waits on where the host bounds it
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 benchmarks/throughput.py --null-net --bare --rounds 3 --epochs 4 --json "$OUT/$name.json" \
    experiment=original data.batch_size=2 model.channels_last=false "${common[@]}" "$@" 2>&1 \
    | tr '\r' '\n' | grep -E '"(host|python)"|Error|error'
  ratios "$OUT/$name.json"
}

writes() {  # writes NAME NEEDED_SECONDS ARGS...: what two checkpoint writes an epoch cost a loop of small ops
  # on the main thread, written Lightning's way and the project's (checkpoint_writes.py)
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  timeout $(( $(left) - 5 )) python3 benchmarks/checkpoint_writes.py --json "$OUT/$name.json" "$@" 2>&1 \
    | grep -A3 -E '"(epoch_s_median|writes_add_ms_per_epoch)"|Error|error' | grep -vE '^--|"none": 0.0$|}'
}

lr_range() {  # lr_range NAME NEEDED_SECONDS OVERRIDES...: the LR range test (src/find_lr.py) and what it suggests
  local name=$1 need=$2; shift 2
  fits "$name" "$need" || return 0
  local start=$SECONDS
  timeout $(( $(left) - 5 )) python3 src/find_lr.py $RECIPE "${common[@]}" "$@" 2>&1 | tr '\r' '\n' | grep -E "max_lr=|Error|error" | tail -n 5
  local run; run=$(ls -td "$work"/logs/find_lr/runs/* | head -n 1)
  cp "$run/lr_find.json" "$OUT/$name.json" && echo "$name: $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
echo "host: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)"
# the tests that only run on a GPU (pytest comes from .device/wheels: pip download pytest iniconfig pluggy)
if python3 -c "import pytest" 2>/dev/null; then
  echo "== GPU tests"; python3 -m pytest -q -rs -p no:cacheprovider tests/test_checkpoint_io.py 2>&1 | tail -n 4
else echo "== skip GPU tests: no pytest here"; fi
# project vs plain loop vs Lightning's loop alone, bf16, eager: where the host's per-step work shows
ROUNDS=3 BENCH_EPOCHS=8 bench bench_bf16 110 --bare
bench bench_bf16_compiled 60 --bare model.compile=true  # the same compiled: CUDA graphs (reduce-overhead) on a GPU
hostwork host_work_cpu 45 trainer=cpu data.subset=2048  # the host's own work per step in each path, on this host's CPU
# the same on the GPU: the null net's kernels are next to nothing, so its steps are the host's work,
# CUDA launches included; what Lightning adds there is what it can add to an eager seed step
if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  hostwork host_work_gpu 45 trainer=gpu data.subset=1024
else echo "== skip host_work_gpu: no GPU"; fi
train seed_bf16 60                       # the seed's 40 epochs, bf16, eager
train seed_bf16_compiled 80 model.compile=true
# an epoch's parts with the shipped checkpoint writes and with none
parts epoch_parts_bf16 40
parts epoch_parts_bf16_no_checkpoints 30 '~callbacks.model_checkpoint' '~callbacks.last_checkpoint' +trainer.enable_checkpointing=false
# what two checkpoint writes an epoch cost the loop on the main thread, Lightning's save against the
# project's; on a GPU the tensors are copied to pinned memory first, as in training
writes checkpoint_writes 40 --device "$(python3 -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')" --epochs 3
train seed_bf16_cudagraphs 60 model.compile=cudagraphs  # CUDA graphs of the eager kernels (12 s start-up on an H100)
bench bench_bf16_cudagraphs 60 --bare model.compile=cudagraphs
syncs host_syncs_bf16 40                 # per step: host syncs, kernel launches, GPU busy vs wall time
# the same compiled: which graphs run, are they replayed, and why torch skipped or recompiled any
TORCH_LOGS=cudagraphs,perf_hints,recompiles syncs host_syncs_bf16_compiled 45 model.compile=true
train seed_bf16_compile_default 90 model.compile=default  # torch.compile's default mode, no CUDA graphs
lr_range lr_find_compiled 60 model.compile=true  # the range test through CUDA graphs
train seed_fp32 90 trainer.precision=32-true trainer.benchmark=false model.channels_last=false
echo "== done in $SECONDS s"
