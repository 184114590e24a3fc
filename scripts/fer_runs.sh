#!/usr/bin/env bash
# Reproduce the FER-2013 accuracy table: BioNIC (sparse engine) and the conventional baseline,
# one run per seed, each in OUTDIR/<mode>-seed<k>/ (results.json, metrics.csv, plots).
#   bash scripts/fer_runs.sh DATA OUTDIR EPOCHS SEED [SEED ...]
# Extra train_fer.py flags can be passed in $TRAIN_FLAGS (e.g. "--batch-size 256 --amp").
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 out=$2 epochs=$3
shift 3
PY=${PYTHON:-python3}
for seed in "$@"; do
  for mode in sparse baseline; do
    $PY scripts/train_fer.py --$mode --data "$data" --epochs "$epochs" --seed "$seed" \
      --out "$out/$mode-seed$seed" ${TRAIN_FLAGS:-}
  done
done
$PY scripts/fer_table.py "$out"
