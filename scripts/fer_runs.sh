#!/usr/bin/env bash
# The FER-2013 accuracy table: BioNIC (every biological feature on, block-sparse engine) and the
# conventional baseline, one run per seed in OUTDIR/<variant>/seed<k>/ (the ablation runner's
# "full" and "baseline" variants: resumable, one process per run), then the table and figures.
#   bash scripts/fer_runs.sh DATA OUTDIR CONFIG SEED [SEED ...]
# e.g. bash scripts/fer_runs.sh fer2013.csv.gz runs/fer configs/fer-cpu.json 0 1 2
# Extra runner flags (e.g. "--jobs 4") can be passed in $RUN_FLAGS.
set -euo pipefail
data=$1 out=$2 config=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3 )}
$PY -m bionic_sparse.training.ablation --config "$config" --data "$data" --out "$out" --seeds "$@" \
  --variants full baseline ${RUN_FLAGS:-}
$PY -m bionic_sparse.training.fer_table "$out"
