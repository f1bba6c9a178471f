#!/usr/bin/env bash
# Builds the extension in place for the GPU scripts (cuda/run.sh, e2e/run_cuda.sh) and checks that
# it imports. Usage: benchmarks/cuda/build.sh OUTDIR   (writes OUTDIR/build.log; exit 1 on failure)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUTDIR=$1
PY=${PYTHON:-python3}
# The CPU SIMD sets are not needed for the CUDA checks (the reference is plain torch).
TERNARY_OPS_NO_SIMD=${TERNARY_OPS_NO_SIMD:-1} MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1
rc=$?; tail -3 "$OUTDIR/build.log"
[ $rc -eq 0 ] || { grep -E "error|Error" "$OUTDIR/build.log" | head -40; exit 1; }
grep -A2 "mma_int8\|gemv" "$OUTDIR/build.log" | grep -E "registers|spill" | sort | uniq -c | head -5
$PY -c "import ternary_ops as t; print('backends:', t.backends())" || exit 1
