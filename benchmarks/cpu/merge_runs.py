"""Merges JSON results of several runs of `python -m ternary_ops.bench` with the same options.

On a machine shared with other work a row is sometimes hit by a descheduled thread (a parallel
region then waits a whole scheduler timeslice: ~8 ms rows). Taking, per row, the run with the
lower median drops those rows; the DRAM fraction is judged against the best read bandwidth any
of the runs measured (conservative). Every input run stays on disk, and the merged JSON names
the run each row came from.

    python benchmarks/cpu/merge_runs.py run1.json run2.json -o merged.json [--plot out.png]

The merged table it prints is benchmarks/data/cpu_merged_table.txt (benchmarks/results/cpu.md).
"""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from ternary_ops.bench import (Result, attach_ratios, check_targets, plot_roofline,  # noqa: E402
                               print_table, row_warnings)


def key(r: dict):
    return (r["kind"], r["shape"], r["M"], r["mode"], r["format"], r["act"])


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    order, best, src = [], {}, {}
    for i, run in enumerate(runs):
        for r in run["results"]:
            k = key(r)
            if k not in best:
                order.append(k)
            if k not in best or r["median_us"] < best[k]["median_us"]:
                best[k], src[k] = r, i
    dram = max(run["info"]["read_bandwidth_gbs"]["reference"] for run in runs)
    fields = set(Result.__dataclass_fields__)
    results = []
    for k in order:
        d = {f: v for f, v in best[k].items() if f in fields}
        d["extra"] = {"run": args.runs[src[k]]}
        results.append(Result(**d))
    attach_ratios(results, dram)
    info = dict(runs[0]["info"])
    info["merged_from"] = args.runs
    info["read_bandwidth_gbs"] = {"per_run": [run["info"]["read_bandwidth_gbs"] for run in runs],
                                  "reference": dram}
    print(f"# merged {len(runs)} runs; DRAM% of {dram:.1f} GB/s (best read bandwidth of any run)")
    print_table(results)
    for line in row_warnings(results):
        print(line)
    targets = check_targets(results, dram)
    for line in targets:
        print(line)
    Path(args.out).write_text(json.dumps({"info": info, "results": [asdict(r) for r in results],
                                          "targets": targets}, indent=1))
    if args.plot:
        plot_roofline(results, dram, args.plot,
                      f"{info['device_name']}, {info['threads']} threads, {info['cpu_kernel']}")


if __name__ == "__main__":
    main()
