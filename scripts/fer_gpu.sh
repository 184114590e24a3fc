#!/usr/bin/env bash
# The FER-2013 GPU runs in one command: first the accuracy table (BioNIC with all biology and the
# conventional baseline, seeds 0 1 2), then the whole ablation grid at the same budget in the same
# folder (the table's runs are skipped there), then the table, figures and ablation report.
#   bash scripts/fer_gpu.sh DATA OUT [JOBS] [CONFIG]
# DATA: fer2013.csv(.gz) or the image-folder .zip; JOBS: runs in parallel (default 4; they share
# the GPUs); CONFIG: default configs/fer-gpu.json. Resumable: run it again after an interruption.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=$1 out=$2 jobs=${3:-4} config=${4:-$root/configs/fer-gpu.json}
PY=${PYTHON:-$( [ -x "$root/.venv/bin/python" ] && echo "$root/.venv/bin/python" || echo python3 )}
$PY -m bionic_sparse.training.ablation --config "$config" --data "$data" --out "$out" --seeds 0 1 2 \
  --variants full baseline --jobs "$jobs"
$PY -m bionic_sparse.training.fer_table "$out" --models full baseline
$PY -m bionic_sparse.training.ablation --config "$config" --data "$data" --out "$out" --seeds 0 1 2 --jobs "$jobs"
$PY -m bionic_sparse.training.fer_table "$out" --models full baseline
