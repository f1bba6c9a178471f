#!/usr/bin/env bash
# End to end on an NVIDIA GPU in one go: builds the extension, runs tests/test_cuda.py, then
# benchmarks/e2e/decode.py once per line of E2E_RUNS (each line: decode.py's arguments).
# Usage (a CUDA toolkit and a CUDA build of torch; transformers and accelerate installed):
#   benchmarks/e2e/run_cuda.sh [results-dir]          (default: build/e2e-cuda)
#   E2E_RUNS=$'--shape llama-8b --mode compiled --vs-dense' SKIP_TESTS=1 benchmarks/e2e/run_cuda.sh
# TEST_K narrows the tests to a pytest -k expression (e.g. "q8 or attention"); SKIP_TESTS=1
# skips them.
# Writes build.log, test.log, e2e.md (every run's table) and e2e_json.tar.gz there.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${OUT:-build/e2e-cuda}}
mkdir -p "$OUTDIR/json"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "=== build ($(($(date +%s) - t0))s)"
benchmarks/cuda/build.sh "$OUTDIR" || exit 1

if [ -z "${SKIP_TESTS:-}" ]; then
  echo "=== tests ($(($(date +%s) - t0))s)"
  $PY -m pytest -q tests/test_cuda.py ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUTDIR/test.log" | tail -5
fi

DEFAULT_RUNS="--shape bitnet-2b --mode eager,compiled --vs-dense --head int8 --embedding int8"
: > "$OUTDIR/e2e.md"
i=0
while IFS= read -r line; do
  [ -z "$line" ] && continue
  i=$((i + 1))
  echo "=== e2e $i: $line ($(($(date +%s) - t0))s)"
  # shellcheck disable=SC2086  # each line is a list of arguments
  $PY benchmarks/e2e/decode.py --device cuda $line --json "$OUTDIR/json/run_$i.json" \
    --markdown "$OUTDIR/json/run_$i.md" 2>&1 | grep -E "^round|Error|error" | tail -40
  { echo "## decode.py --device cuda $line"; echo; cat "$OUTDIR/json/run_$i.md" 2>/dev/null; echo; } \
    >> "$OUTDIR/e2e.md"
done <<< "${E2E_RUNS:-$DEFAULT_RUNS}"
tar -czf "$OUTDIR/e2e_json.tar.gz" -C "$OUTDIR" json && rm -rf "$OUTDIR/json"
cat "$OUTDIR/e2e.md"
echo "=== done ($(($(date +%s) - t0))s)"
