#!/usr/bin/env bash
# Run every GPU test and benchmark in one go and write benchmarks/results/<date>-<gpu>.json.
#   bash scripts/gpu_check.sh [--quick|--full] [--bench-only] [--no-pytest-benchmark] [--part i/k] [RESULTS_DIR]
# --part i/k runs the i-th of k slices of the benchmark grid (to fit a time limit).
# RESULTS_DIR defaults to benchmarks/results. Needs a CUDA GPU; uses the python on PATH
# (or $PYTHON) with torch and triton installed.
set -uo pipefail
cd "$(dirname "$0")/.."
quick="" skip_tests="" part="0/1" skip_pytest_bench=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick="--quick" ;;
    --full) quick="--full" ;;
    --bench-only) skip_tests=1 ;;
    --no-pytest-benchmark) skip_pytest_bench=1 ;;
    --part) part="$2"; shift ;;
    *) break ;;
  esac
  shift
done
results=${1:-benchmarks/results}
mkdir -p "$results"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))") || { echo "no CUDA GPU"; exit 2; }
stamp=$(date -u +%Y-%m-%d)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$results/$stamp-$gpu-nvidia-smi.csv" 2>&1
status=0
# Correctness on the default config of each kernel (autotuning every test shape would take
# minutes of GPU time); the benchmark below autotunes.
if [ -z "$skip_tests" ]; then
  BIONIC_SPARSE_AUTOTUNE=0 $PY -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$results/$stamp-$gpu-tests.xml" 2>&1 | tee "$results/$stamp-$gpu-tests.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
suffix=""
[ "$part" = "0/1" ] || suffix="-part${part%/*}"
$PY benchmarks/gpu_bench.py $quick --part "$part" --out "$results/$stamp-$gpu$suffix.json" 2>&1 | tee "$results/$stamp-$gpu$suffix-bench.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ -z "$skip_pytest_bench" ]; then
  $PY -m pytest -q -m gpu benchmarks -p no:cacheprovider --benchmark-json="$results/$stamp-$gpu-pytest-benchmark.json" 2>&1 | tail -n 30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi
$PY benchmarks/summarize.py "$results/$stamp-$gpu$suffix.json" | tee "$results/$stamp-$gpu$suffix.md"
exit $status
