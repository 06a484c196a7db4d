# Sourced by gpu.sh and gpu_recipes.sh: where results go, the data, a scratch dir for runs and
# caches, and stages that are skipped when too little of BUDGET (seconds) is left.
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
