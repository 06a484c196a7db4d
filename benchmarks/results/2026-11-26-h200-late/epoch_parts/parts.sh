#!/usr/bin/env bash
# Where a seed epoch's time goes beyond the training steps: 8-epoch runs, eager, in variants.
set -u
export PYTHONPATH=$PWD/.device${PYTHONPATH:+:$PYTHONPATH}
OUT=${OUT:-/tmp/parts}; mkdir -p $OUT
DATA=${DATA:-.device/cifar10-jpeg.tar.gz}
RECIPE=${RECIPE:-experiment=seed trainer=gpu}
EPOCHS=${EPOCHS:-8}
work=$(mktemp -d)
common=(data.source=$DATA paths.data_dir=$work/data paths.log_dir=$work/logs trainer.max_epochs=$EPOCHS test=false analysis.enabled=false +callbacks.parts._target_=epoch_parts.EpochParts)
run() {  # run NAME OVERRIDES...
  local name=$1; shift
  echo "== $name ($SECONDS s)"
  timeout ${T:-60} python3 src/train.py $RECIPE "${common[@]}" "$@" 2>&1 | tr '\r' '\n' | grep -E "PARTS|Error|error" | tee $OUT/$name.log | tail -n 5
}
run synced +callbacks.parts.sync=true
run default
run inline_writes trainer.plugins=null
run no_checkpoints '~callbacks.model_checkpoint' '~callbacks.last_checkpoint' +trainer.enable_checkpointing=false
run no_logger "~logger"
run ro_synced model.compile=reduce-overhead +callbacks.parts.sync=true
echo "== done in $SECONDS s"
