"""CUDA benchmark: ternary ops vs dense bf16 F.linear (and vs dequantize-then-cuBLAS) on LLM shapes.

Each configuration is checked against ternary_ops.reference first (bit-exact for act="int8").
Timing: a CUDA graph of >= 32 back-to-back ops, each on a different weight copy in turn (enough
copies to exceed the L2 cache several times, so every call streams its weights from HBM, as a
decoder does layer after layer); each replay is timed with CUDA events; the median replay over
its number of calls is the time per op. The device-to-device copy bandwidth (bytes read +
written) is measured in the same process and is the 100% mark for the weight GB/s.

Usage: python benchmarks/cuda/bench.py [--m 1 4 16 128] [--formats i2 i8] [--out results.md]
"""
import argparse
import functools
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import ternary_ops as tops
from ternary_ops import reference

# profile_target.py sits beside this script (run as benchmarks/cuda/bench.py)
from profile_target import graph_time, l2_size, n_copies, replay_times

SHAPES = [(2560, 2560), (6912, 2560), (2560, 6912), (4096, 4096), (14336, 4096), (4096, 14336)]


def copy_bandwidth(nbytes=2 << 30, iters=20):
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * nbytes / statistics.median(times)


def time_rotating(fn, copies, l2_bytes, bytes_per_call, replays=30):
    """Median seconds per call of fn(copy) over a graph that cycles through `copies`. At least
    32 calls per graph, so the graph's own launch adds little to each call (a decoder runs its
    layers back to back: the steady state is what counts)."""
    calls = max(len(copies), 32)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in copies[:2]:
            fn(c)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(copies[i % len(copies)])
    times = replay_times(g, calls, replays)
    return statistics.median(times), min(times)


def graph_floor(calls=64, replays=20):
    """Per-op time in a CUDA graph of back-to-back calls at a tiny shape (no bytes to speak of):
    the fixed cost that bounds what a single op can reach at any shape."""
    per_call = functools.partial(graph_time, calls=calls, replays=replays)

    e = torch.zeros(1, device="cuda")
    x = torch.randn(1, 64, device="cuda", dtype=torch.bfloat16)
    codes = torch.randint(-1, 2, (64, 64), dtype=torch.int8, device="cuda")
    s = torch.ones((), device="cuda")
    w2 = tops.pack_i2(codes)
    out = {"elementwise add_ (1 kernel)": per_call(lambda: e.add_(1))}
    for act in ("int8", "none"):
        out[f"i2 64x64 M=1 act={act}"] = per_call(
            lambda: torch.ops.ternary.linear_i2(x, w2, s, 64, None, act))  # noqa: B023
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 128])
    ap.add_argument("--formats", nargs="+", default=["i2", "i8"])
    ap.add_argument("--acts", nargs="+", default=["int8", "none"])
    ap.add_argument("--shapes", nargs="+", default=None, help="NxK, e.g. 4096x4096")
    ap.add_argument("--no-dequant-baseline", action="store_true")
    ap.add_argument("--out", default=None, help="markdown table file")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    shapes = SHAPES if not args.shapes else [tuple(map(int, s.split("x"))) for s in args.shapes]

    torch.backends.cuda.matmul.allow_tf32 = False
    props = torch.cuda.get_device_properties(0)
    l2 = l2_size(props)
    bw = copy_bandwidth()
    head = (f"device: {props.name}, {props.multi_processor_count} SMs, L2 {l2 >> 20} MB, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"PDL {'off' if os.environ.get('TERNARY_OPS_CUDA_PDL') == '0' else 'on'} {args.tag}\n"
            f"device-to-device copy bandwidth (read + write): {bw / 1e9:.0f} GB/s")
    floor = graph_floor()
    head += "  \nper-op floor in a CUDA graph (tiny shapes): " + ", ".join(
        f"{k} {v:.2f} us" for k, v in floor.items())
    print(head, flush=True)

    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for (n, k) in shapes:
        dense_copies = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen)
                        for _ in range(n_copies(2 * n * k, l2))]
        codes = torch.randint(-1, 2, (n, k), device="cuda", dtype=torch.int8, generator=gen)
        scale = torch.rand(n, device="cuda", generator=gen) + 0.5
        packed = {"i8": codes, "i2": tops.pack_i2(codes)}
        for m in args.m:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
            t_dense, _ = time_rotating(lambda w: F.linear(x, w), dense_copies, l2, 2 * n * k)
            for fmt in args.formats:
                w0 = packed[fmt]
                wbytes = w0.numel()
                copies = [w0.clone() for _ in range(n_copies(wbytes, l2))]
                for act in args.acts:
                    if fmt == "i2":
                        op = lambda w: torch.ops.ternary.linear_i2(x, w, scale, n, None, act)  # noqa
                        ref = reference.linear_i2(x, w0, scale, n, None, act)
                    else:
                        op = lambda w: torch.ops.ternary.linear_i8(x, w, scale, None, act)  # noqa
                        ref = reference.linear_i8(x, w0, scale, None, act)
                    got = op(w0)
                    if act == "int8":
                        ok = bool(torch.equal(got, ref))
                    else:
                        err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
                        ok = err < 2e-2
                    t, tmin = time_rotating(op, copies, l2, wbytes)
                    row = dict(N=n, K=k, M=m, format=fmt, act=act, ok=ok, us=t * 1e6,
                               us_min=tmin * 1e6, weight_GBps=wbytes / t / 1e9,
                               frac_copy_bw=wbytes / t / bw, dense_bf16_us=t_dense * 1e6,
                               speedup_vs_dense=t_dense / t)
                    if m > 8 and not args.no_dequant_baseline:
                        # The path the tiled kernels must beat: decode to bf16, then cuBLAS.
                        def deq(w):
                            c = tops.unpack_i2(w, n) if fmt == "i2" else w
                            return F.linear(x, c.to(torch.bfloat16)) * scale.to(torch.bfloat16)
                        td, _ = time_rotating(deq, copies, l2, wbytes)
                        row["dequant_cublas_us"] = td * 1e6
                    rows.append(row)
                    print(fmt_row(row), flush=True)
                del copies
        del dense_copies
        torch.cuda.empty_cache()

    table = render(head, rows)
    print("\n" + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(head=head, copy_bw=bw, floor_us=floor, rows=rows), f, indent=1)
    if not all(r["ok"] for r in rows):
        print("CORRECTNESS FAILURES:", [r for r in rows if not r["ok"]])
        sys.exit(1)


def fmt_row(r):
    s = (f"{r['N']:>5}x{r['K']:<5} M={r['M']:<3} {r['format']} act={r['act']:<4} "
         f"{'ok ' if r['ok'] else 'BAD'} {r['us']:8.2f} us  {r['weight_GBps']:7.0f} GB/s "
         f"{100 * r['frac_copy_bw']:5.1f}%  dense bf16 {r['dense_bf16_us']:8.2f} us "
         f"x{r['speedup_vs_dense']:.2f}")
    if "dequant_cublas_us" in r:
        s += f"  dequant+cuBLAS {r['dequant_cublas_us']:8.2f} us"
    return s


def render(head, rows):
    lines = [head.replace("\n", "  \n"), "",
             "| N x K | M | format | act | check | time (us) | weight GB/s | % copy BW | "
             "dense bf16 (us) | speedup vs dense | dequant+cuBLAS (us) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dq = f"{r['dequant_cublas_us']:.1f}" if "dequant_cublas_us" in r else ""
        lines.append(
            f"| {r['N']}x{r['K']} | {r['M']} | {r['format']} | {r['act']} | "
            f"{'yes' if r['ok'] else 'NO'} | {r['us']:.2f} | {r['weight_GBps']:.0f} | "
            f"{100 * r['frac_copy_bw']:.1f} | {r['dense_bf16_us']:.2f} | "
            f"{r['speedup_vs_dense']:.2f} | {dq} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
