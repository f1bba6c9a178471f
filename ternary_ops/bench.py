"""Benchmark of the ternary linear ops against dense ``F.linear``, on one device, in one process.

    python -m ternary_ops.bench                        # the full table (several minutes)
    python -m ternary_ops.bench --quick                # i2, act=int8, M=1, two shapes
    python -m ternary_ops.bench --shapes 6912x2560 --m 1 --formats i2 --act int8 --modes cold
    python -m ternary_ops.bench --threads 2 --json out.json --plot roofline.png
    python -m ternary_ops.bench --device cuda          # or mps: same table, synchronized per call

For every shape (N x K: output x input features), M (activation rows), weight format, act mode
and mode it reports the median time of one call, GOP/s (2*M*N*K / t), weight GB/s (weight bytes
/ t), the fraction of the device's read bandwidth (measured in the same process by summing a
buffer far larger than the last-level cache) and the speed ratio against ``F.linear`` on dense
float32 and bfloat16 weights timed the same way in the same process.

Modes: "hot" calls one weight matrix over and over (cache-resident where it fits); "cold"
rotates over distinct copies totalling at least --cold-gib (default: max(1 GiB, 2 x LLC)), as
a decoder streams every layer's weights from memory. Timings are per call (synchronized on
cuda/mps), so they include the op's dispatch overhead, as a caller sees it. Every row (ternary
and dense alike) runs under torch.inference_mode(), as inference does; --grad-mode times the
ops with autograd enabled instead (the ternary ops then also pass through their Python
autograd wrapper, about 20 us per call on a 2-core x86 VM).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

DEFAULT_SHAPES = ["2560x2560", "6912x2560", "2560x6912", "4096x4096", "14336x4096", "4096x14336"]
DEFAULT_M = [1, 8, 128]


# ---- device helpers ---------------------------------------------------------------------

def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def llc_bytes() -> int:
    """Largest CPU cache size reported by sysfs (0 if unknown)."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in os.listdir(base):
            try:
                with open(os.path.join(base, idx, "size")) as f:
                    s = f.read().strip()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
            best = max(best, int(s.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return best


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return cpu_name()


def time_calls(fn: Callable[[int], object], sync: Callable[[], None], warmup: int, min_reps: int,
               max_reps: int, budget_s: float) -> List[float]:
    """Per-call wall times (seconds) of fn(i), i counting calls; median taken by the caller."""
    for i in range(warmup):
        fn(i)
    sync()
    times: List[float] = []
    start = time.perf_counter()
    i = warmup
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn(i)
        sync()
        times.append(time.perf_counter() - t0)
        i += 1
    return times


def read_bandwidth(device: torch.device, nbytes: int, reps: int = 7) -> Dict[str, float]:
    """Read bandwidth (GB/s) of a float32 sum over a buffer of nbytes (far larger than LLC)."""
    sync = synchronizer(device)
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    times = time_calls(lambda i: buf.sum(), sync, warmup=2, min_reps=reps, max_reps=reps,
                       budget_s=0.0)
    del buf
    gbs = [nbytes / t / 1e9 for t in times]
    return {"median": statistics.median(gbs), "best": max(gbs), "bytes": nbytes}


# ---- problems ---------------------------------------------------------------------------

@dataclass
class Result:
    kind: str            # "ternary" or "dense"
    shape: str           # "NxK"
    N: int
    K: int
    M: int
    mode: str            # "hot" or "cold"
    format: str          # i2 / i8 (ternary), float32 / bfloat16 (dense)
    act: str             # int8 / none (ternary), "-" (dense)
    median_us: float
    gops: float
    weight_gbs: float
    weight_bytes: int
    copies: int
    reps: int
    dram_fraction: Optional[float] = None
    vs_fp32: Optional[float] = None
    vs_bf16: Optional[float] = None
    min_us: float = 0.0
    max_us: float = 0.0
    iqr_pct: float = 0.0
    extra: dict = field(default_factory=dict)


# A timing is flagged as noisy when its interquartile range exceeds this fraction of its median
# (a quiet machine gives a few percent), or when a bandwidth figure exceeds the measured one.
NOISY_IQR = 0.25


@dataclass
class Spread:
    """Order statistics of repeated timings (seconds): what every printed figure comes with."""
    min: float
    q1: float
    median: float
    q3: float
    max: float
    n: int

    @property
    def iqr_fraction(self) -> float:
        return (self.q3 - self.q1) / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.iqr_fraction > NOISY_IQR

    def format(self, scale: float = 1e3, unit: str = "ms", digits: int = 3) -> str:
        """e.g. "1.234 ms (min 1.200, max 1.500, IQR 4%)"."""
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.median * scale)} {unit} (min {f.format(self.min * scale)}, "
                f"max {f.format(self.max * scale)}, IQR {100 * self.iqr_fraction:.0f}%)")


def spread(samples: Sequence[float]) -> Spread:
    """Min, quartiles, median and max of ``samples`` (linear interpolation between ranks)."""
    xs = sorted(samples)
    if not xs:
        raise ValueError("spread: no samples")

    def q(p):
        pos = p * (len(xs) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    return Spread(xs[0], q(0.25), q(0.5), q(0.75), xs[-1], len(xs))


def noise_warnings(spreads: Dict[str, Spread], fractions: Optional[Dict[str, float]] = None
                   ) -> List[str]:
    """One line per figure that should not be trusted: a wide spread, or a fraction of the
    measured bandwidth above 100% (the measurement ran while the machine was busier or the data
    was cached)."""
    out = [f"WARNING {name}: IQR {100 * s.iqr_fraction:.0f}% of the median (over "
           f"{100 * NOISY_IQR:.0f}%): the machine was busy; rerun before trusting this figure"
           for name, s in spreads.items() if s.noisy]
    out += [f"WARNING {name}: {100 * f:.0f}% of the measured bandwidth is impossible: the "
            "bandwidth measure ran in a busier moment, or the data was cached; rerun"
            for name, f in (fractions or {}).items() if f is not None and f > 1.0]
    return out


def parse_shape(s: str):
    n, k = s.lower().split("x")
    return int(n), int(k)


def copies_for(nbytes: int, mode: str, cold_bytes: int) -> int:
    return 1 if mode == "hot" else max(2, -(-cold_bytes // max(nbytes, 1)))


def bench_ternary(N, K, M, fmt, act, mode, device, args, cold_bytes) -> Result:
    import ternary_ops as tops

    sync = synchronizer(device)
    gen = torch.Generator().manual_seed(N * 31 + K)
    codes = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=gen)
    w0 = tops.pack_i2(codes) if fmt == "i2" else codes
    w0 = w0.to(device)
    nbytes = w0.numel() * w0.element_size()
    copies = copies_for(nbytes, mode, cold_bytes)
    ws = [w0] + [w0.clone() for _ in range(copies - 1)]
    scale = torch.tensor([0.02], device=device)
    x = torch.randn(M, K, generator=gen).to(device)
    if fmt == "i2":
        op = torch.ops.ternary.linear_i2
        fn = lambda i: op(x, ws[i % copies], scale, N, None, act)  # noqa: E731
    else:
        op = torch.ops.ternary.linear_i8
        fn = lambda i: op(x, ws[i % copies], scale, None, act)  # noqa: E731
    times = time_calls(fn, sync, args.warmup, args.min_reps, args.max_reps, args.budget)
    del ws
    return make_result("ternary", N, K, M, mode, fmt, act, times, nbytes, copies)


def bench_dense(N, K, M, dtype, mode, device, args, cold_bytes) -> Result:
    sync = synchronizer(device)
    gen = torch.Generator().manual_seed(N * 17 + K)
    w0 = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=gen).to(device=device,
                                                                          dtype=dtype)
    nbytes = w0.numel() * w0.element_size()
    copies = copies_for(nbytes, mode, cold_bytes)
    ws = [w0] + [w0.clone() for _ in range(copies - 1)]
    x = torch.randn(M, K, generator=gen).to(device=device, dtype=dtype)
    fn = lambda i: F.linear(x, ws[i % copies])  # noqa: E731
    times = time_calls(fn, sync, args.warmup, args.min_reps, args.max_reps, args.budget)
    del ws
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
    return make_result("dense", N, K, M, mode, name, "-", times, nbytes, copies)


def make_result(kind, N, K, M, mode, fmt, act, times, nbytes, copies) -> Result:
    sp = spread(times)
    t = sp.median
    return Result(kind=kind, shape=f"{N}x{K}", N=N, K=K, M=M, mode=mode, format=fmt, act=act,
                  median_us=t * 1e6, min_us=sp.min * 1e6, max_us=sp.max * 1e6,
                  iqr_pct=100 * sp.iqr_fraction, gops=2.0 * M * N * K / t / 1e9,
                  weight_gbs=nbytes / t / 1e9, weight_bytes=nbytes, copies=copies,
                  reps=len(times))


# ---- report -----------------------------------------------------------------------------

def fmt_opt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def print_table(results: List[Result], out=sys.stdout) -> None:
    """One row per measurement: the median call time with its min, max and interquartile range
    (IQR% of the median; "!" marks a noisy row), then rates and speed-ups from the medians."""
    hdr = (f"{'kind':7} {'shape':>11} {'M':>4} {'mode':4} {'format':8} {'act':4} "
           f"{'median_us':>10} {'min_us':>9} {'max_us':>9} {'IQR%':>5} {'GOP/s':>8} {'wGB/s':>7} "
           f"{'DRAM%':>6} {'x fp32':>7} {'x bf16':>7}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in results:
        frac = None if r.dram_fraction is None else 100 * r.dram_fraction
        flag = "!" if r.iqr_pct > 100 * NOISY_IQR or (frac or 0) > 100 else " "
        print(f"{r.kind:7} {r.shape:>11} {r.M:>4} {r.mode:4} {r.format:8} {r.act:4} "
              f"{r.median_us:>10.1f} {r.min_us:>9.1f} {r.max_us:>9.1f} {r.iqr_pct:>4.0f}{flag} "
              f"{r.gops:>8.1f} {r.weight_gbs:>7.2f} {fmt_opt(frac, '{:.0f}'):>6} "
              f"{fmt_opt(r.vs_fp32):>7} {fmt_opt(r.vs_bf16):>7}", file=out)
    warnings_ = [f"WARNING {r.kind} {r.shape} M={r.M} {r.mode} {r.format} {r.act}: " + w
                 for r in results for w in row_warnings(r)]
    for line in warnings_:
        print(line, file=out)


def row_warnings(r: "Result") -> List[str]:
    out = []
    if r.iqr_pct > 100 * NOISY_IQR:
        out.append(f"IQR {r.iqr_pct:.0f}% of the median: the machine was busy; rerun")
    if r.dram_fraction is not None and r.dram_fraction > 1.0:
        out.append(f"{100 * r.dram_fraction:.0f}% of the measured DRAM bandwidth is impossible "
                   "(the bandwidth measure ran in a busier moment, or the weights were cached); "
                   "rerun")
    return out


def attach_ratios(results: List[Result], dram_gbs: float) -> None:
    dense = {(r.shape, r.M, r.mode, r.format): r for r in results if r.kind == "dense"}
    for r in results:
        r.dram_fraction = r.weight_gbs / dram_gbs if dram_gbs > 0 else None
        if r.kind != "ternary":
            continue
        for dt, attr in (("float32", "vs_fp32"), ("bfloat16", "vs_bf16")):
            d = dense.get((r.shape, r.M, r.mode, dt))
            if d is not None:
                setattr(r, attr, d.median_us / r.median_us)


def check_targets(results: List[Result], dram_gbs: float) -> List[str]:
    """The x86 performance goals of benchmarks/results/cpu.md (2 threads, act=int8, i2, M=1 unless
    said), where measured."""
    lines = []
    t = [r for r in results if r.kind == "ternary" and r.format == "i2"]
    cold1 = [r for r in t if r.act == "int8" and r.M == 1 and r.mode == "cold"]
    for r in cold1:
        ok = r.dram_fraction is not None and r.dram_fraction >= 0.9
        lines.append(f"{'PASS' if ok else 'MISS'} cold i2 int8 M=1 {r.shape}: "
                     f"{100 * (r.dram_fraction or 0):.0f}% of DRAM read bandwidth (target 90%)")
    for r in t:
        if r.act == "int8" and r.M == 1 and r.mode == "hot" and r.shape == "4096x4096":
            lines.append(f"{'PASS' if r.gops >= 400 else 'MISS'} hot i2 int8 M=1 4096x4096: "
                         f"{r.gops:.0f} GOP/s (target 400)")
    for r in cold1:
        if r.vs_bf16 is not None:
            lines.append(f"{'PASS' if r.vs_bf16 >= 10 else 'MISS'} cold i2 int8 M=1 {r.shape}: "
                         f"{r.vs_bf16:.1f}x dense bf16 F.linear (target 10x)")
    for r in t:
        if r.act == "int8" and r.M == 128 and r.vs_bf16 is not None:
            lines.append(f"{'PASS' if r.vs_bf16 >= 1.5 else 'MISS'} {r.mode} i2 int8 M=128 "
                         f"{r.shape}: {r.vs_bf16:.2f}x dense bf16 throughput (target 1.5x)")
    for r in t:
        if r.act == "none" and r.M == 1 and r.mode == "cold" and r.dram_fraction is not None:
            lines.append(f"{'PASS' if r.dram_fraction >= 0.5 else 'MISS'} cold i2 none M=1 "
                         f"{r.shape}: {100 * r.dram_fraction:.0f}% of the DRAM floor (target 50%)")
    return lines


def matplotlib_pyplot(parser: argparse.ArgumentParser):
    """matplotlib.pyplot (Agg backend), or a usage error naming the extra that installs it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        parser.error("--plot needs matplotlib: pip install -e \".[bench]\" (or pip install "
                     "matplotlib)")
    return plt


def plot_roofline(results: List[Result], dram_gbs: float, path: str, title: str, plt) -> None:
    fig, ax = plt.subplots(figsize=(9, 6))
    ai = [2.0 * r.M * r.N * r.K / r.weight_bytes for r in results]  # ops per weight byte
    lo, hi = min(ai) / 2, max(ai) * 2
    xs = [lo * (hi / lo) ** (i / 100) for i in range(101)]
    ax.plot(xs, [dram_gbs * x for x in xs], "k--", lw=1,
            label=f"DRAM read roof ({dram_gbs:.1f} GB/s x ops/byte)")
    styles = {}
    for r, a in zip(results, ai):
        key = (r.kind, r.format, r.act, r.mode)
        label = f"{r.format}{'' if r.kind == 'dense' else ' act=' + r.act} {r.mode}"
        marker = {"i2": "o", "i8": "s", "float32": "^", "bfloat16": "v"}[r.format]
        fill = "full" if r.mode == "cold" else "none"
        ax.plot([a], [r.gops], marker=marker, fillstyle=fill, linestyle="",
                color=plt.cm.tab20((list(styles).index(key) if key in styles else len(styles)) % 20),
                label=None if key in styles else label)
        styles.setdefault(key, True)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (ops per weight byte)")
    ax.set_ylabel("GOP/s (2*M*N*K / t)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---- main -------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m ternary_ops.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES),
                    help="comma-separated NxK (output x input features)")
    ap.add_argument("--m", default=",".join(map(str, DEFAULT_M)), help="comma-separated M")
    ap.add_argument("--formats", default="i2,i8", help="ternary formats: i2,i8")
    ap.add_argument("--act", default="int8,none", help="act modes: int8,none")
    ap.add_argument("--modes", default="hot,cold", help="hot,cold")
    ap.add_argument("--dense", default="float32,bfloat16",
                    help="dense F.linear baselines (float32,bfloat16; 'none' to skip)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--kernel", default=None,
                    help="force a CPU kernel set (ternary_ops.cpu_kernels_available())")
    ap.add_argument("--cold-gib", type=float, default=None,
                    help="total bytes of the cold-mode weight copies (default max(1, 2 x LLC))")
    ap.add_argument("--bw-gib", type=float, default=None,
                    help="buffer for the read-bandwidth measurement (default max(1, 4 x LLC))")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-reps", type=int, default=10)
    ap.add_argument("--max-reps", type=int, default=2000)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timing per row")
    ap.add_argument("--grad-mode", action="store_true",
                    help="time with autograd enabled instead of under torch.inference_mode()")
    ap.add_argument("--quick", action="store_true",
                    help="i2, act=int8, M=1, 2560x2560 and 4096x4096, hot and cold")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None, help="write a roofline plot (PNG; needs matplotlib)")
    ap.add_argument("--targets", action="store_true",
                    help="print the x86 performance goals (benchmarks/results/cpu.md) as "
                         "PASS/MISS lines")
    args = ap.parse_args(argv)
    args.pyplot = matplotlib_pyplot(ap) if args.plot else None  # fail before measuring
    if args.quick:
        args.shapes, args.m, args.formats, args.act = "2560x2560,4096x4096", "1", "i2", "int8"
    return args


def run_all(shapes, ms, modes, dense, fmts, acts, device, args, cold_bytes, results) -> None:
    for (N, K) in shapes:
        for M in ms:
            for mode in modes:
                for dt in dense:
                    results.append(bench_dense(N, K, M, dt, mode, device, args, cold_bytes))
                for fmt in fmts:
                    for act in acts:
                        results.append(bench_ternary(N, K, M, fmt, act, mode, device, args,
                                                     cold_bytes))
                        r = results[-1]
                        print(f"  {r.shape} M={M} {mode} {fmt} act={act}: {r.median_us:.1f} us",
                              file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    import ternary_ops as tops

    if device.type == "cpu" and args.kernel:
        tops.select_cpu_kernel(args.kernel)
    llc = llc_bytes()
    gib = 1 << 30
    cold_bytes = int(args.cold_gib * gib) if args.cold_gib else max(gib, 2 * llc)
    bw_bytes = int(args.bw_gib * gib) if args.bw_gib else max(gib, 4 * llc)
    if device.type != "cpu":
        bw_bytes = min(bw_bytes, 2 * gib)

    shapes = [parse_shape(s) for s in args.shapes.split(",") if s]
    ms = [int(m) for m in args.m.split(",") if m]
    fmts = [f for f in args.formats.split(",") if f]
    acts = [a for a in args.act.split(",") if a]
    modes = [m for m in args.modes.split(",") if m]
    dense_dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16}
    bad = [d for d in args.dense.split(",") if d and d not in dense_dtypes and d != "none"]
    if bad:
        raise SystemExit(f"--dense: expected a comma-separated subset of float32, bfloat16 (or "
                         f"'none'), got {', '.join(bad)}")
    dense = [] if args.dense in ("", "none") else [
        dense_dtypes[d] for d in args.dense.split(",") if d]
    for name, values, allowed in (("--formats", fmts, ("i2", "i8")),
                                  ("--act", acts, ("int8", "none")),
                                  ("--modes", modes, ("hot", "cold"))):
        if not values or any(v not in allowed for v in values):
            raise SystemExit(f"{name}: expected a comma-separated subset of "
                             f"{', '.join(allowed)}, got {','.join(values) or 'nothing'}")

    info = {
        "device": str(device), "device_name": device_name(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_kernel": tops.cpu_kernel() if device.type == "cpu" else None,
        "cpu_kernels_available": tops.cpu_kernels_available(),
        "llc_bytes": llc, "cold_bytes": cold_bytes, "python": platform.python_version(),
    }
    print(f"# {info['device_name']} | device {device} | threads {info['threads']} | "
          f"kernel {info['cpu_kernel']} | torch {torch.__version__}")
    bw0 = read_bandwidth(device, bw_bytes)
    print(f"# read bandwidth (sum over {bw_bytes / gib:.1f} GiB): median {bw0['median']:.1f} GB/s, "
          f"best {bw0['best']:.1f} GB/s; cold mode rotates over >= {cold_bytes / gib:.2f} GiB")

    info["inference_mode"] = not args.grad_mode
    results: List[Result] = []
    ctx = torch.enable_grad() if args.grad_mode else torch.inference_mode()
    with ctx:
        run_all(shapes, ms, modes, dense, fmts, acts, device, args, cold_bytes, results)

    bw1 = read_bandwidth(device, bw_bytes)
    # The fraction is against the best read bandwidth seen (start or end of the run): the
    # conservative choice.
    dram = max(bw0["best"], bw1["best"])
    info["read_bandwidth_gbs"] = {"start": bw0, "end": bw1, "reference": dram}
    print(f"# read bandwidth at the end: median {bw1['median']:.1f} GB/s, best {bw1['best']:.1f} "
          f"GB/s; DRAM% below is of {dram:.1f} GB/s")
    attach_ratios(results, dram)
    print_table(results)
    targets = check_targets(results, dram) if args.targets else []
    for line in targets:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": [asdict(r) for r in results],
                       "targets": targets}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot_roofline(results, dram, args.plot,
                      f"{info['device_name']}, {info['threads']} threads, {info['cpu_kernel']}",
                      args.pyplot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
