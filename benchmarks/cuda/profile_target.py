"""Profiling helper for the CUDA kernels: the per-op floor in a CUDA graph (tiny shapes), one
call of a chosen configuration, to run under Nsight Compute, and the kernels of one op with
their time each (the quantize pre-pass apart from the GEMM, say):

  python benchmarks/cuda/profile_target.py floor
  ncu --section SpeedOfLight --section Occupancy --section WarpStateStats \
      python benchmarks/cuda/profile_target.py one --n 14336 --k 4096 --m 1 --format i2 --act int8
  python benchmarks/cuda/profile_target.py kernels --n 4096 --k 14336 --m 512
"""
import argparse
import math
import statistics

import torch

import ternary_ops as tops


def op(fmt, x, w, scale, n, act):
    if fmt == "i2":
        return torch.ops.ternary.linear_i2(x, w, scale, n, None, act)
    return torch.ops.ternary.linear_i8(x, w, scale, None, act)


def replay_times(g, calls, replays):
    """Seconds per call of each of `replays` replays of the CUDA graph g holding `calls` calls
    (after three warm-up replays), timed with CUDA events."""
    for _ in range(3):
        g.replay()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / calls)
    return times


def graph_time(fn, calls=64, replays=20):
    """Median microseconds per call of fn in a graph of `calls` back-to-back calls."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return 1e6 * statistics.median(replay_times(g, calls, replays))


def l2_size(props):
    """The L2 size of a GPU (torch.cuda.get_device_properties), 50 MB where torch does not say."""
    return getattr(props, "L2_cache_size", 50 << 20)


def n_copies(nbytes, l2_bytes):
    """Copies of nbytes that together exceed 4x the L2 (at least 3): cycling over them, each call
    reads its copy from HBM."""
    return max(3, math.ceil(4 * l2_bytes / max(nbytes, 1)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["floor", "one", "kernels"])
    ap.add_argument("--n", type=int, default=14336)
    ap.add_argument("--k", type=int, default=4096)
    ap.add_argument("--m", type=int, default=1)
    ap.add_argument("--format", default="i2")
    ap.add_argument("--act", default="int8")
    a = ap.parse_args()
    if a.what == "floor":
        x = torch.randn(1, 64, device="cuda", dtype=torch.bfloat16)
        codes = torch.randint(-1, 2, (64, 64), dtype=torch.int8, device="cuda")
        s = torch.ones((), device="cuda")
        e = torch.empty(1, device="cuda")
        print(f"empty-ish elementwise op per graph node: {graph_time(lambda: e.add_(1)):.2f} us")
        for fmt in ("i2", "i8"):
            w = tops.pack_i2(codes) if fmt == "i2" else codes
            for act in ("int8", "none"):
                t = graph_time(lambda: op(fmt, x, w, s, 64, act))
                print(f"{fmt} act={act} 64x64 M=1 per op in a graph: {t:.2f} us")
        return
    x = torch.randn(a.m, a.k, device="cuda", dtype=torch.bfloat16)
    codes = torch.randint(-1, 2, (a.n, a.k), dtype=torch.int8, device="cuda")
    w = tops.pack_i2(codes) if a.format == "i2" else codes
    s = torch.ones((), device="cuda")
    if a.what == "kernels":
        kernels(a, x, w, s)
        return
    for _ in range(3):
        op(a.format, x, w, s, a.n, a.act)
    torch.cuda.synchronize()


def kernels(a, x, w, s, calls=50):
    """Each CUDA kernel of the op with its mean time per call (torch.profiler, calls back to back
    over weight copies of 4x the L2, so the weights come from HBM as in bench.py), then the op
    per call in a CUDA graph of the same calls, for their sum against the whole."""
    l2 = l2_size(torch.cuda.get_device_properties(0))
    copies = [w.clone() for _ in range(n_copies(w.numel() * w.element_size(), l2))]
    run = [lambda w=c: op(a.format, x, w, s, a.n, a.act) for c in copies]
    for f in run[:3]:
        f()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            run[i % len(run)]()
        torch.cuda.synchronize()
    total = 0.0
    print(f"{a.format} {a.n}x{a.k} M={a.m} act={a.act}: kernels, us per call")
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total):
        if e.self_device_time_total > 0:
            total += e.self_device_time_total / calls
            print(f"  {e.self_device_time_total / calls:8.2f}  x{e.count / calls:g}  {e.key[:90]}")
    graph = graph_time(lambda: [f() for f in run], calls=1) / len(run)
    print(f"  {total:8.2f}  sum; the op in a CUDA graph: {graph:.2f} us per call")


if __name__ == "__main__":
    main()
