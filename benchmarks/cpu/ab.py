"""Same-window A/B of two builds of ternary_ops on the CPU.

Runs `python -m ternary_ops.bench` with the same options from two source trees (each with its
extension built in place), alternating A, B, A, B, ... for --rounds rounds, so drift of the
shared machine hits both alike. Per row it prints each build's median over the rounds, the
spread (min-max of the round medians) and the ratio of B's time to A's (below 1: B faster).
Rows are compared as ratios to dense F.linear timed in the same run too (vs_bf16), which
cancels most of the machine's drift.

    python benchmarks/cpu/ab.py A_TREE B_TREE [--rounds 4] [--out ab.md] -- <bench options>
    e.g. python benchmarks/cpu/ab.py /tmp/base . -- --threads 2 --m 1 --formats i2,i8 --act int8
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def key(r: dict):
    return (r["shape"], r["M"], r["mode"], r["format"], r["act"])


def run_bench(tree: Path, bench_args, out_json: Path):
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run([sys.executable, "-m", "ternary_ops.bench", *bench_args, "--json",
                    str(out_json)], cwd=str(tree), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    rows = json.loads(out_json.read_text())["results"]
    return {key(r): r for r in rows if r["kind"] == "ternary"}


def spread(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main():
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="source tree of build A (the baseline)")
    ap.add_argument("b", type=Path, help="source tree of build B")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = ap.parse_args(own)

    runs = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for label, tree in (("A", args.a), ("B", args.b)):
                runs[label].append(run_bench(tree.resolve(), bench_args,
                                             Path(tmp) / f"{label}{i}.json"))
                print(f"round {i + 1}/{args.rounds}: {label} done", file=sys.stderr)

    lines = ["| shape | M | mode | format | act | A us: median (range) | B us: median (range) "
             "| B / A time | A vs bf16 | B vs bf16 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k in runs["A"][0]:
        a = [r[k]["median_us"] for r in runs["A"]]
        b = [r[k]["median_us"] for r in runs["B"] if k in r]
        a_bf = [r[k]["vs_bf16"] for r in runs["A"] if r[k].get("vs_bf16")]
        b_bf = [r[k]["vs_bf16"] for r in runs["B"] if k in r and r[k].get("vs_bf16")]
        ratio = statistics.median(b) / statistics.median(a)
        bf = lambda v: f"{statistics.median(v):.2f}x" if v else "-"  # noqa: E731
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {k[4]} | {spread(a)} | {spread(b)} "
                     f"| {ratio:.3f} | {bf(a_bf)} | {bf(b_bf)} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
