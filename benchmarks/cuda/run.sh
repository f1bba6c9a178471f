#!/usr/bin/env bash
# Build the extension with the CUDA backend, run the CUDA tests, then the benchmark, in one go.
# Usage (on a machine with an NVIDIA GPU, a CUDA toolkit and a CUDA build of torch):
#   benchmarks/cuda/run.sh [results-dir]        (default: build/cuda-results)
# Writes build.log, test.log, bench.md, bench.json, bench_nopdl.md there. TEST_K narrows the tests
# to a pytest -k expression, PYTEST_ARGS adds pytest arguments (-n 8: in parallel); SWEEP=1 also
# runs the tile sweep of cuda/mma_sweep.py (sweep.log) with SWEEP_ARGS as its arguments, on
# SWEEP_SHAPES (default: every LLM and layer shape).
# BENCH_ARGS narrows the main run, NOPDL_ARGS the run with PDL off; NOPDL_ARGS=skip skips that run.
# E2E_ARGS, where set, runs benchmarks/e2e/decode.py --device cuda once more with those arguments
# on the same build (e2e.md, e2e.json).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=${1:-${OUT:-build/cuda-results}}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUTDIR/gpu.txt"

echo "=== build ($(($(date +%s) - t0))s)"
benchmarks/cuda/build.sh "$OUTDIR" || exit 1

echo "=== tests ($(($(date +%s) - t0))s)"
# shellcheck disable=SC2086  # a list of arguments
$PY -m pytest -q -x ${PYTEST_ARGS:-} tests/test_cuda.py ${TEST_K:+-k "$TEST_K"} 2>&1 | tee "$OUTDIR/test.log" | tail -15
test_rc=${PIPESTATUS[0]}

if [ -n "${SWEEP:-}" ]; then
  echo "=== tile sweep: compiling ($(($(date +%s) - t0))s)"
  # one untimed process per shape at once fills Triton's cache; the timed run then compiles
  # nothing (SWEEP_SHAPES: the shapes, default mma_sweep.py's)
  shapes=${SWEEP_SHAPES:-$(cd benchmarks/cuda && $PY -c \
    "import mma_sweep; print(' '.join(f'{n}x{k}' for n, k in mma_sweep.DEFAULT_SHAPES))")}
  for s in $shapes; do
    # shellcheck disable=SC2086  # a list of arguments
    $PY benchmarks/cuda/mma_sweep.py ${SWEEP_ARGS:-} --shapes "$s" --compile-only \
      > "$OUTDIR/sweep_compile_$s.log" 2>&1 &
  done
  wait
  echo "=== tile sweep ($(($(date +%s) - t0))s)"
  # shellcheck disable=SC2086  # a list of arguments
  $PY benchmarks/cuda/mma_sweep.py ${SWEEP_ARGS:-} --shapes $shapes 2>&1 | tee "$OUTDIR/sweep.log" \
    | grep -v Warning | tail -80
fi

echo "=== benchmark ($(($(date +%s) - t0))s)"
# BENCH_ARGS narrows the main run, e.g. BENCH_ARGS="--m 1 4 --acts int8" (default: everything).
$PY benchmarks/cuda/bench.py ${BENCH_ARGS:-} --out "$OUTDIR/bench.md" --json "$OUTDIR/bench.json" \
  > "$OUTDIR/bench.log" 2>&1
bench_rc=$?
grep -v "^|" "$OUTDIR/bench.log" | tail -n +3 | cut -c1-150
if [ "${NOPDL_ARGS:-}" != "skip" ]; then
  TERNARY_OPS_CUDA_PDL=0 $PY benchmarks/cuda/bench.py --m 1 4 --acts int8 --tag "(PDL off)" \
    ${NOPDL_ARGS:-} --out "$OUTDIR/bench_nopdl.md" > "$OUTDIR/bench_nopdl.log" 2>&1
  echo "--- PDL off"
  grep -v "^|" "$OUTDIR/bench_nopdl.log" | grep "M=" | cut -c1-110
fi
if [ -n "${E2E_ARGS:-}" ]; then
  echo "=== e2e ($(($(date +%s) - t0))s)"
  # shellcheck disable=SC2086  # a list of arguments
  $PY benchmarks/e2e/decode.py --device cuda $E2E_ARGS --json "$OUTDIR/e2e.json" \
    --markdown "$OUTDIR/e2e.md" > "$OUTDIR/e2e.log" 2>&1
  grep -E "^round|^\* " "$OUTDIR/e2e.log" | cut -c1-150
fi
echo "=== done ($(($(date +%s) - t0))s) tests rc=$test_rc bench rc=$bench_rc"
