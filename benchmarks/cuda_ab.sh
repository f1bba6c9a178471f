#!/usr/bin/env bash
# Same-machine A/B of two versions of csrc/cuda: builds the working tree, benchmarks it, swaps in
# the files of ALT_DIR (e.g. from `git show REV:csrc/cuda/gemv.cu > ALT_DIR/gemv.cu`, prepared
# before the device call), rebuilds, benchmarks, restores the working tree's files, rebuilds and
# benchmarks again (A, B, A: drift between runs shows as A vs A).
# Usage: benchmarks/cuda_ab.sh ALT_DIR [cuda_bench.py args]   (default args: --m 1 2 --acts int8)
# Writes ab.md (the three tables) to $OUT or build/cuda-ab.
set -uo pipefail
cd "$(dirname "$0")/.."
ALT=${1:?usage: benchmarks/cuda_ab.sh ALT_DIR [bench args]}; shift
ARGS=("$@"); [ ${#ARGS[@]} -gt 0 ] || ARGS=(--m 1 2 --acts int8)
OUTDIR=${OUT:-build/cuda-ab}; mkdir -p "$OUTDIR" build/ab-cur
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TERNARY_OPS_NO_SIMD=1 MAX_JOBS=${MAX_JOBS:-16}
PY=${PYTHON:-python3}
files=$(cd "$ALT" && ls)
rm -f build/ab-cur/*
for f in $files; do [ -e "csrc/cuda/$f" ] && cp "csrc/cuda/$f" build/ab-cur/; done
t0=$(date +%s)
run() {  # $1: label. Touch every source so header changes recompile too.
  touch csrc/cuda/*
  $PY setup.py build_ext --inplace > "$OUTDIR/build.log" 2>&1 || { tail -30 "$OUTDIR/build.log"; exit 1; }
  echo "=== $1 ($(($(date +%s) - t0))s)"
  $PY benchmarks/cuda_bench.py "${ARGS[@]}" --tag "($1)" --out "$OUTDIR/ab.md" 2>&1 | grep "M=" \
    | grep -v "^|" | cut -c1-100
}
run "working tree"
for f in $files; do cp "$ALT/$f" csrc/cuda/; done
run "$ALT"
for f in $files; do  # back to the working tree's files; ALT-only files removed
  if [ -e "build/ab-cur/$f" ]; then cp "build/ab-cur/$f" csrc/cuda/; else rm -f "csrc/cuda/$f"; fi
done
run "working tree again"
echo "=== done ($(($(date +%s) - t0))s)"
