"""Tabulates an A/B run of benchmarks/cuda/ab.sh: for each bench.py row (shape, M, format,
act), the median and range over the rounds of each side's time per call and the ratio of the
medians B / A (below 1: B is faster). Usage: python benchmarks/cuda/ab_table.py OUTDIR"""
import glob
import json
import os
import statistics
import sys


def load(outdir, side):
    runs = {}
    for path in sorted(glob.glob(os.path.join(outdir, f"{side}*.json"))):
        with open(path) as f:
            data = json.load(f)
        for r in data["rows"]:
            key = (r["N"], r["K"], r["M"], r["format"], r["act"])
            runs.setdefault(key, []).append(r["us"])
    return runs, data["head"] if runs else ""


def main():
    outdir = sys.argv[1]
    a, head = load(outdir, "a")
    b, _ = load(outdir, "b")
    print(head.splitlines()[0] if head else "")
    print()
    print("| N x K | M | format | act | A us, median (min-max) | B us, median (min-max) | B / A |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for key in sorted(set(a) & set(b)):
        n, k, m, fmt, act = key
        ma, mb = statistics.median(a[key]), statistics.median(b[key])
        ratios.append(mb / ma)
        print(f"| {n}x{k} | {m} | {fmt} | {act} | {ma:.2f} ({min(a[key]):.2f}-{max(a[key]):.2f}) "
              f"| {mb:.2f} ({min(b[key]):.2f}-{max(b[key]):.2f}) | {mb / ma:.3f} |")
    if ratios:
        print(f"\n{len(ratios)} rows, {len(next(iter(a.values())))} rounds per side; B / A: median "
              f"{statistics.median(ratios):.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
