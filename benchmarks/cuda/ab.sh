#!/usr/bin/env bash
# Same-window A/B of two versions of the package on a CUDA machine: BASE_DIR, an older tree
# (`git archive REV csrc setup.py tools ternary_ops | tar -x -C BASE_DIR`, prepared before the
# device call), against this tree. Builds both at once, runs the CUDA tests on this tree, then
# bench.py's rows on A, B, A, B, ... (ROUNDS rounds, default 3) and tabulates per row the median
# and range of each side and the time ratio B / A (ab_table.py).
# Usage: benchmarks/cuda/ab.sh BASE_DIR [bench.py args]   (default: --m 1 --acts int8 none)
# B_DIR=<tree> takes B from another prepared tree instead of this one; SKIP_TESTS=1 skips the
# tests.
# Writes build-a.log, build-b.log, test.log, a<i>.json, b<i>.json and ab.md to $OUT
# (default build/cuda-ab).
set -uo pipefail
cd "$(dirname "$0")/../.."
BASE=$(cd "${1:?usage: benchmarks/cuda/ab.sh BASE_DIR [bench args]}" && pwd); shift
ARGS=("$@"); [ ${#ARGS[@]} -gt 0 ] || ARGS=(--m 1 --acts int8 none)
OUTDIR=${OUT:-build/cuda-ab}; mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TERNARY_OPS_NO_SIMD=1 MAX_JOBS=${MAX_JOBS:-8}
t0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader | tee "$OUTDIR/gpu.txt"
B=$(cd "${B_DIR:-.}" && pwd)
OUTABS=$(cd "$OUTDIR" && pwd)
(cd "$BASE" && $PY setup.py build_ext --inplace > "$OUTABS/build-a.log" 2>&1) & pa=$!
(cd "$B" && $PY setup.py build_ext --inplace > "$OUTABS/build-b.log" 2>&1); rb=$?
wait $pa; ra=$?
echo "=== built A rc=$ra B rc=$rb ($(($(date +%s) - t0))s)"
[ $ra -eq 0 ] && [ $rb -eq 0 ] || { tail -20 "$OUTDIR"/build-*.log; exit 1; }
rt=skipped
[ -n "${SKIP_TESTS:-}" ] || { PYTHONPATH="$B" $PY -m pytest -q tests/test_cuda.py > "$OUTDIR/test.log" 2>&1; rt=$?; }
tail -3 "$OUTDIR/test.log"
echo "=== tests rc=$rt ($(($(date +%s) - t0))s)"
for i in $(seq 1 "${ROUNDS:-3}"); do
  for side in a b; do
    root=$B; [ $side = a ] && root=$BASE
    PYTHONPATH="$root" $PY benchmarks/cuda/bench.py "${ARGS[@]}" --tag "($side$i)" \
      --json "$OUTDIR/$side$i.json" > "$OUTDIR/$side$i.log" 2>&1 || echo "bench $side$i failed"
    echo "=== $side$i ($(($(date +%s) - t0))s)"
  done
done
$PY benchmarks/cuda/ab_table.py "$OUTDIR" | tee "$OUTDIR/ab.md"
echo "=== done ($(($(date +%s) - t0))s) tests rc=$rt"
