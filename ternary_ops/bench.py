"""Benchmark of the ternary linear ops against dense ``F.linear``, on one device, in one process.

    python -m ternary_ops.bench                        # the full table (several minutes)
    python -m ternary_ops.bench --quick                # i2, act=int8, M=1, two shapes
    python -m ternary_ops.bench --shapes 6912x2560 --m 1 --formats i2 --act int8 --modes cold
    python -m ternary_ops.bench --threads 2 --json out.json --plot roofline.png
    python -m ternary_ops.bench --device cuda          # or mps: same table, synchronized per call

For every shape (N x K: output x input features), M (activation rows), weight format, act mode
and mode it reports the time of one call (median, interquartile range and minimum over every
timed call), GOP/s (2*M*N*K / t), weight GB/s (weight bytes / t), the fraction of the device's
read bandwidth (measured in the same process by summing a buffer far larger than the
last-level cache) and the speed ratio against ``F.linear`` on dense float32 and bfloat16
weights timed the same way in the same process. The variants of one shape, M and mode (dense
and ternary) are timed in --rounds rounds that alternate them, and each ratio is taken per
round: its median and range over the rounds are printed. A row whose timing spreads (IQR over
30% of the median, or median over 1.5x the minimum), whose ratio spreads (over 1.5x across
rounds) or whose cold-mode bandwidth exceeds the measured DRAM bandwidth is marked "!" and
explained in a WARNING line: the machine was busy or the measure is invalid.

The timing helpers (time_call, compare, summarize, format_timing, format_ratio,
warning_lines) are the ones the examples use for their speed figures.

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
from typing import Callable, Dict, List, Optional

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


# ---- timing and its statistics (shared with examples/) -------------------------------------
#
# Every speed figure this package prints comes from here: per-call times summarized as
# min / quartiles / median / max, a ``noisy`` flag with its reasons, and speed-ups taken as
# ratios of variants timed in alternating rounds (A, B, A, B, ...) in the same window.

#: A timing is flagged when its interquartile range exceeds this fraction of its median ...
NOISY_REL_IQR = 0.30
#: ... or when its median exceeds its minimum by this factor (calls slowed by other work).
NOISY_MEDIAN_OVER_MIN = 1.5
#: A speed-up is flagged when its per-round values spread by more than this factor (max / min).
NOISY_RATIO_SPREAD = 1.5
#: Timings and speed-ups are flagged when other processes (or the hypervisor: steal time) kept
#: more than this fraction of the CPUs this process may use busy while they were measured: a
#: loaded machine can slow every variant alike, which no spread shows.
NOISY_OTHER_LOAD = 0.20
#: Fewer samples than this show no spread, so nothing says whether the machine was busy: flagged.
MIN_SAMPLES = 3


#: What an unflagged figure satisfies.
CLEAN = (f"every timing's IQR is within {100 * NOISY_REL_IQR:.0f}% of its median and its "
         f"median within {NOISY_MEDIAN_OVER_MIN:g}x its minimum, every speed-up within "
         f"{NOISY_RATIO_SPREAD:g}x over the rounds, other processes used under "
         f"{100 * NOISY_OTHER_LOAD:.0f}% of the CPUs (where /proc/stat tells), at least "
         f"{MIN_SAMPLES} samples each")


def _cpu_busy_seconds(cpus) -> Optional[float]:
    """Busy time (seconds, steal included) of the given CPUs since boot, from /proc/stat; None
    where that is unavailable (not Linux)."""
    try:
        hz = os.sysconf("SC_CLK_TCK")
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                    continue
                v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
                busy += sum(v) - v[3] - (v[4] if len(v) > 4 else 0)
        return busy / hz
    except (OSError, ValueError, AttributeError):
        return None


def other_load_probe() -> Callable[[], Optional[float]]:
    """Starts watching the CPUs this process may run on; the function it returns gives the
    fraction of their capacity that other processes (or the hypervisor) used since then, or
    None where it cannot be known."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        cpus = set(range(os.cpu_count() or 1))
    busy0, own0, wall0 = _cpu_busy_seconds(cpus), os.times(), time.perf_counter()

    def stop() -> Optional[float]:
        busy1, own1, wall = _cpu_busy_seconds(cpus), os.times(), time.perf_counter() - wall0
        if busy0 is None or busy1 is None or wall < 0.05:
            return None
        own = (own1.user + own1.system) - (own0.user + own0.system)
        return max(0.0, min(1.0, (busy1 - busy0 - own) / (len(cpus) * wall)))
    return stop


@dataclass
class Timing:
    """Summary of repeated measurements: per-call seconds, or per-round ratios.

    ``noisy`` is set, with ``reasons``, when the spread says that something else was using the
    machine, or when the implied bandwidth is impossible (see :func:`summarize`)."""
    n: int
    min: float
    q1: float
    median: float
    q3: float
    max: float
    noisy: bool = False
    reasons: List[str] = field(default_factory=list)
    samples: List[float] = field(default_factory=list, repr=False)
    other_load: Optional[float] = None  # see other_load_probe

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def rel_iqr(self) -> float:
        """IQR / median (0 for a zero median)."""
        return self.iqr / self.median if self.median else 0.0

    @property
    def spread(self) -> float:
        """max / min (inf for a zero minimum)."""
        return self.max / self.min if self.min > 0 else float("inf")


def quantile(sorted_values: List[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, linearly interpolated between closest
    ranks (numpy's default, statistics.quantiles' "inclusive" method)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples, *, bytes_per_call: Optional[float] = None,
              peak_gbs: Optional[float] = None,
              max_rel_iqr: Optional[float] = NOISY_REL_IQR,
              max_median_over_min: Optional[float] = NOISY_MEDIAN_OVER_MIN,
              max_spread: Optional[float] = None, other_load: Optional[float] = None,
              max_other_load: Optional[float] = NOISY_OTHER_LOAD,
              min_samples: Optional[int] = MIN_SAMPLES) -> Timing:
    """Summarizes samples (e.g. seconds per call) and flags them as noisy when

    - the IQR exceeds ``max_rel_iqr`` of the median, or the median exceeds the minimum by
      ``max_median_over_min`` (the machine was busy: rerun when it is idle);
    - ``max / min`` exceeds ``max_spread`` (off by default: with many calls the maximum is
      almost always a call that lost its core for a moment; used for per-round ratios);
    - ``other_load`` (other processes' share of the CPUs while the samples were taken, see
      other_load_probe) exceeds ``max_other_load``: a busy machine can slow every call alike;
    - ``bytes_per_call / median`` (the bandwidth the samples imply, in GB/s) exceeds
      ``peak_gbs``, the most the machine can deliver: the measure itself is invalid (the bytes
      did not come from where it assumes, or the peak was measured while the machine was busy).

    - there are fewer than ``min_samples`` samples: no spread to judge by.

    A threshold of None disables its check."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("summarize: no samples")
    t = Timing(n=len(xs), min=xs[0], q1=quantile(xs, 0.25), median=quantile(xs, 0.5),
               q3=quantile(xs, 0.75), max=xs[-1], samples=list(samples), other_load=other_load)
    if max_rel_iqr is not None and t.rel_iqr > max_rel_iqr:
        t.reasons.append(f"IQR is {100 * t.rel_iqr:.0f}% of the median (over "
                         f"{100 * max_rel_iqr:.0f}%)")
    if max_median_over_min is not None and t.min > 0 and t.median / t.min > max_median_over_min:
        t.reasons.append(f"median is {t.median / t.min:.1f}x the minimum (over "
                         f"{max_median_over_min:g}x)")
    if max_spread is not None and t.spread > max_spread:
        t.reasons.append(f"max is {t.spread:.2f}x the min (over {max_spread:g}x)")
    if other_load is not None and max_other_load is not None and other_load > max_other_load:
        t.reasons.append(f"other processes kept {100 * other_load:.0f}% of the CPUs busy while "
                         f"it was measured (over {100 * max_other_load:.0f}%)")
    if bytes_per_call is not None and peak_gbs and t.median > 0:
        gbs = bytes_per_call / t.median / 1e9
        if gbs > peak_gbs:
            t.reasons.append(f"{gbs:.1f} GB/s is more than the {peak_gbs:.1f} GB/s the machine "
                             f"can deliver: the measure is invalid")
    if min_samples is not None and t.n < min_samples:
        t.reasons.append(f"only {t.n} sample{'s' if t.n > 1 else ''}: too few to show a spread "
                         f"(at least {min_samples}; more rounds or calls)")
    t.noisy = bool(t.reasons)
    return t


def sample_calls(fn: Callable[[], object], *, sync: Optional[Callable[[], None]] = None,
                 warmup: int = 3, min_reps: int = 10, max_reps: int = 1000,
                 budget_s: float = 0.5) -> List[float]:
    """Per-call wall times (seconds) of fn(): ``warmup`` untimed calls, then at least
    ``min_reps`` and at most ``max_reps`` timed calls, for up to ``budget_s`` seconds.
    ``sync`` (e.g. torch.cuda.synchronize) runs after every call, inside the timing."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps
                                     or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def time_call(fn: Callable[[], object], *, sync: Optional[Callable[[], None]] = None,
              warmup: int = 3, min_reps: int = 10, max_reps: int = 1000, budget_s: float = 0.5,
              bytes_per_call: Optional[float] = None, peak_gbs: Optional[float] = None) -> Timing:
    """Times fn() (see sample_calls) and summarizes the per-call seconds (see summarize),
    including the load other processes put on the CPUs meanwhile."""
    load = other_load_probe()
    xs = sample_calls(fn, sync=sync, warmup=warmup, min_reps=min_reps, max_reps=max_reps,
                      budget_s=budget_s)
    return summarize(xs, bytes_per_call=bytes_per_call, peak_gbs=peak_gbs, other_load=load())


@dataclass
class Comparison:
    """Variants measured in alternating rounds: ``timings[label]`` over all rounds and
    ``round_medians[label][r]`` per round; speedup() compares two of them round by round."""
    timings: Dict[str, Timing]
    round_medians: Dict[str, List[float]]
    other_load: Optional[float] = None  # over all rounds, see other_load_probe

    @property
    def rounds(self) -> int:
        return len(next(iter(self.round_medians.values()), []))

    def speedup(self, label: str, over: str) -> Timing:
        """How many times faster ``label`` ran than ``over``: the per-round ratios
        median(over) / median(label), summarized; noisy when they spread by more than
        NOISY_RATIO_SPREAD (max / min), or when other processes loaded the CPUs meanwhile. A
        drift of the machine between rounds that hits both alike leaves the ratio alone (the
        pooled timings then carry the flag)."""
        ratios = [b / a for a, b in zip(self.round_medians[label], self.round_medians[over])]
        return summarize(ratios, max_rel_iqr=None, max_median_over_min=None,
                         max_spread=NOISY_RATIO_SPREAD, other_load=self.other_load)


def compare_rounds(measure: Dict[str, Callable[[], List[float]]], rounds: int = 5,
                   **summarize_kw) -> Comparison:
    """Calls every ``measure[label]()`` (which returns samples, e.g. seconds per call) once per
    round, alternating the variants within each round (A, B, A, B, ...; the order rotates
    every round), so that a change in the machine's load hits them all alike.
    ``summarize_kw`` goes to summarize() for every label, or per label as a dict."""
    labels = list(measure)
    load = other_load_probe()
    samples: Dict[str, List[float]] = {k: [] for k in labels}
    medians: Dict[str, List[float]] = {k: [] for k in labels}
    for r in range(max(1, rounds)):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            xs = list(measure[label]())
            samples[label] += xs
            medians[label].append(statistics.median(xs))
    other = load()
    timings = {}
    for k in labels:
        kw = {name: (v.get(k) if isinstance(v, dict) else v) for name, v in summarize_kw.items()}
        timings[k] = summarize(samples[k], other_load=other, **kw)
    return Comparison(timings, medians, other)


def compare(fns: Dict[str, Callable[[], object]], *, rounds: int = 5,
            sync: Optional[Callable[[], None]] = None, warmup: int = 3, min_reps: int = 10,
            max_reps: int = 1000, budget_s: float = 0.5,
            bytes_per_call: Optional[Dict[str, float]] = None,
            peak_gbs: Optional[float] = None) -> Comparison:
    """Times each fns[label]() in ``rounds`` alternating rounds (see compare_rounds). Each
    variant gets ``warmup`` untimed calls before its first round and one before each later
    round (its caches were just used by the others), then min_reps / max_reps / budget_s split
    evenly over the rounds."""
    rounds = max(1, rounds)
    chunk_max = max(1, max_reps // rounds)
    chunk_min = min(chunk_max, max(1, -(-min_reps // rounds)))
    started = set()

    def measure(label):
        def run():
            w = warmup if label not in started else 1
            started.add(label)
            return sample_calls(fns[label], sync=sync, warmup=w, min_reps=chunk_min,
                                max_reps=chunk_max, budget_s=budget_s / rounds)
        return run

    return compare_rounds({k: measure(k) for k in fns}, rounds, bytes_per_call=bytes_per_call,
                          peak_gbs=peak_gbs)


def format_timing(t: Timing, unit: str = "us") -> str:
    """e.g. "123.4 us (min 120.1, IQR 121.0-125.3, max 340.2; 500 calls)" of a Timing in
    seconds."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    digits = 1 if t.median * scale >= 10 else 3

    def v(x):
        return f"{x * scale:.{digits}f}"
    return (f"{v(t.median)} {unit} (min {v(t.min)}, IQR {v(t.q1)}-{v(t.q3)}, max {v(t.max)}; "
            f"{t.n} calls)")


def format_ratio(t: Timing) -> str:
    """e.g. "5.21x (5.02-5.40 over 5 rounds)": the median per-round ratio and its range."""
    return f"{t.median:.2f}x ({t.min:.2f}-{t.max:.2f} over {t.n} rounds)"


#: Printed once after the warnings.
ADVICE = ("WARNING: the flagged figures are not to be trusted: the machine was busy or the "
          "measure is invalid. Rerun when the machine is idle.")


def print_warnings(warnings: List[str], clean: str = "no figure flagged", out=None) -> None:
    """Prints the warning lines and ADVICE once after them, or, when there are none, one line
    saying that nothing was flagged and why that can be trusted."""
    out = out or sys.stdout
    for line in (warnings + [ADVICE]) if warnings else [f"{clean}: {CLEAN}"]:
        print(line, file=out)


def warning_lines(label: str, t: Timing) -> List[str]:
    """A "WARNING: <label>: <reasons>" line for a noisy Timing (none for a clean one); print
    ADVICE once after them."""
    if not t.noisy:
        return []
    return [f"WARNING: {label}: {'; '.join(t.reasons)}"]


def require_matplotlib(option: str = "--plot"):
    """matplotlib.pyplot (Agg backend), or SystemExit naming the extra that installs it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(f"{option} needs matplotlib, which the 'bench' extra installs: from a "
                         f"clone, pip install -e \".[bench]\" (with --no-build-isolation, as "
                         f"in the README's install, to build against the torch you have), or "
                         f"pip install \"matplotlib>=3.5\"")
    return plt


def time_calls(fn: Callable[[int], object], sync: Callable[[], None], warmup: int, min_reps: int,
               max_reps: int, budget_s: float) -> List[float]:
    """Per-call wall times (seconds) of fn(i), i counting calls from 0 (see sample_calls)."""
    count = iter(range(1 << 62))
    return sample_calls(lambda: fn(next(count)), sync=sync, warmup=warmup, min_reps=min_reps,
                        max_reps=max_reps, budget_s=budget_s)


def read_bandwidth(device: torch.device, nbytes: int, reps: int = 7) -> Dict[str, float]:
    """Read bandwidth (GB/s) of a float32 sum over a buffer of nbytes (far larger than LLC):
    median, best and worst of ``reps`` sums, and whether they spread (noisy)."""
    sync = synchronizer(device)
    buf = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    t = time_call(lambda: buf.sum(), sync=sync, warmup=2, min_reps=reps, max_reps=reps,
                  budget_s=0.0)
    del buf
    return {"median": nbytes / t.median / 1e9, "best": nbytes / t.min / 1e9,
            "worst": nbytes / t.max / 1e9, "bytes": nbytes, "noisy": t.noisy,
            "reasons": t.reasons}


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
    vs_fp32: Optional[float] = None   # median over rounds of dense float32 time / this time
    vs_bf16: Optional[float] = None
    min_us: float = 0.0
    extra: dict = field(default_factory=dict)
    q1_us: float = 0.0
    q3_us: float = 0.0
    max_us: float = 0.0
    rounds: int = 1
    vs_fp32_range: Optional[List[float]] = None   # [min, max] of the per-round ratios
    vs_bf16_range: Optional[List[float]] = None
    notes: List[str] = field(default_factory=list)  # why the timing or a ratio is noisy
    bandwidth_note: Optional[str] = None            # set by attach_ratios: impossible DRAM%
    noisy: bool = False                             # notes or bandwidth_note

    @property
    def iqr_pct(self) -> float:
        return 100 * (self.q3_us - self.q1_us) / self.median_us if self.median_us else 0.0


def parse_shape(s: str):
    n, k = s.lower().split("x")
    return int(n), int(k)


def copies_for(nbytes: int, mode: str, cold_bytes: int) -> int:
    return 1 if mode == "hot" else max(2, -(-cold_bytes // max(nbytes, 1)))


def _rotating(call, ws):
    """A zero-argument function calling call(w) on the weight copies ws in turn."""
    count = iter(range(1 << 62))
    return lambda: call(ws[next(count) % len(ws)])


def bench_group(N, K, M, mode, dense, fmts, acts, device, args, cold_bytes) -> List[Result]:
    """Every variant of one (shape, M, mode): the dense dtypes and the ternary format x act
    pairs, timed in args.rounds alternating rounds; ratios to dense are per round."""
    import ternary_ops as tops

    variants = {}  # (kind, format, act) -> (fn, weight bytes, copies)
    for dtype in dense:
        gen = torch.Generator().manual_seed(N * 17 + K)
        w0 = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=gen).to(device=device,
                                                                              dtype=dtype)
        nbytes = w0.numel() * w0.element_size()
        copies = copies_for(nbytes, mode, cold_bytes)
        ws = [w0] + [w0.clone() for _ in range(copies - 1)]
        x = torch.randn(M, K, generator=gen).to(device=device, dtype=dtype)
        name = {torch.float32: "float32", torch.bfloat16: "bfloat16"}[dtype]
        variants[("dense", name, "-")] = (_rotating(lambda w, x=x: F.linear(x, w), ws),
                                          nbytes, copies)
    for fmt in fmts:
        gen = torch.Generator().manual_seed(N * 31 + K)
        codes = torch.randint(-1, 2, (N, K), dtype=torch.int8, generator=gen)
        w0 = (tops.pack_i2(codes) if fmt == "i2" else codes).to(device)
        nbytes = w0.numel() * w0.element_size()
        copies = copies_for(nbytes, mode, cold_bytes)
        ws = [w0] + [w0.clone() for _ in range(copies - 1)]
        scale = torch.tensor([0.02], device=device)
        x = torch.randn(M, K, generator=gen).to(device)
        for act in acts:
            if fmt == "i2":
                call = lambda w, x=x, s=scale, act=act: torch.ops.ternary.linear_i2(  # noqa: E731
                    x, w, s, N, None, act)
            else:
                call = lambda w, x=x, s=scale, act=act: torch.ops.ternary.linear_i8(  # noqa: E731
                    x, w, s, None, act)
            variants[("ternary", fmt, act)] = (_rotating(call, ws), nbytes, copies)

    cmp = compare({k: v[0] for k, v in variants.items()}, rounds=args.rounds,
                  sync=synchronizer(device), warmup=args.warmup, min_reps=args.min_reps,
                  max_reps=args.max_reps, budget_s=args.budget)
    results = []
    for key, (_, nbytes, copies) in variants.items():
        kind, fmt, act = key
        r = make_result(kind, N, K, M, mode, fmt, act, cmp.timings[key], nbytes, copies)
        r.rounds = cmp.rounds
        if kind == "ternary":
            for name, attr in (("float32", "vs_fp32"), ("bfloat16", "vs_bf16")):
                base = ("dense", name, "-")
                if base not in variants:
                    continue
                ratio = cmp.speedup(key, over=base)
                setattr(r, attr, ratio.median)
                setattr(r, attr + "_range", [ratio.min, ratio.max])
                if ratio.spread > NOISY_RATIO_SPREAD:
                    r.notes.append(f"the ratio to dense {name} ranges {ratio.min:.2f}-"
                                   f"{ratio.max:.2f} over {ratio.n} rounds")
        r.noisy = bool(r.notes)
        results.append(r)
    return results


def make_result(kind, N, K, M, mode, fmt, act, timing: Timing, nbytes, copies) -> Result:
    t = timing.median
    return Result(kind=kind, shape=f"{N}x{K}", N=N, K=K, M=M, mode=mode, format=fmt, act=act,
                  median_us=t * 1e6, min_us=timing.min * 1e6, q1_us=timing.q1 * 1e6,
                  q3_us=timing.q3 * 1e6, max_us=timing.max * 1e6,
                  gops=2.0 * M * N * K / t / 1e9, weight_gbs=nbytes / t / 1e9,
                  weight_bytes=nbytes, copies=copies, reps=timing.n, notes=list(timing.reasons),
                  noisy=timing.noisy)


# ---- report -----------------------------------------------------------------------------

def fmt_opt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def fmt_ratio(v, rng) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" [{rng[0]:.2f}-{rng[1]:.2f}]" if rng else "")


def legend(rounds: Optional[int] = None, cold_bytes: Optional[int] = None) -> List[str]:
    """What the table measures, as "#" lines."""
    cold = f">= {cold_bytes / (1 << 30):.2f} GiB of" if cold_bytes else "enough"
    per = f" in {rounds} rounds that alternate" if rounds else ", alternating"
    return [
        "# Each row times one call: the ternary op, or dense F.linear, on M activation rows x K "
        "against N x K weights (shape NxK).",
        f"# median_us, IQR_us (25th-75th percentile) and min_us are over all timed calls{per} "
        "the variants of a shape/M/mode;",
        "#   GOP/s (2*M*N*K/t), wGB/s (weight bytes/t) and DRAM% (wGB/s over the measured DRAM "
        "read bandwidth) use the median.",
        "# x fp32 / x bf16: dense time / ternary time per round, median [min-max over rounds].",
        "# hot: one weight matrix called again and again (cache-resident where it fits: DRAM% "
        "above 100 means it came from cache).",
        f"# cold: rotates over {cold} weight copies, as a decoder streams its layers from DRAM "
        "(DRAM% above 100 is impossible: flagged).",
        "# act=int8: int8 activations, integer dot (W1.58A8); act=none: float activations.",
        "# !: noisy or invalid row; the reasons follow the table.",
    ]


def print_table(results: List[Result], out=sys.stdout) -> None:
    hdr = (f"{'kind':7} {'shape':>11} {'M':>4} {'mode':4} {'format':8} {'act':4} "
           f"{'median_us':>10} {'IQR_us':>17} {'min_us':>9} {'GOP/s':>8} {'wGB/s':>7} "
           f"{'DRAM%':>6} {'x fp32':>18} {'x bf16':>18} !")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    for r in results:
        frac = None if r.dram_fraction is None else 100 * r.dram_fraction
        iqr = f"{r.q1_us:.1f}-{r.q3_us:.1f}" if r.q3_us else "-"
        print(f"{r.kind:7} {r.shape:>11} {r.M:>4} {r.mode:4} {r.format:8} {r.act:4} "
              f"{r.median_us:>10.1f} {iqr:>17} {r.min_us:>9.1f} {r.gops:>8.1f} "
              f"{r.weight_gbs:>7.2f} {fmt_opt(frac, '{:.0f}'):>6} "
              f"{fmt_ratio(r.vs_fp32, r.vs_fp32_range):>18} "
              f"{fmt_ratio(r.vs_bf16, r.vs_bf16_range):>18} {'!' if r.noisy else ''}", file=out)


def row_warnings(results: List[Result]) -> List[str]:
    """One "WARNING: ..." line per noisy or invalid row."""
    lines = []
    for r in results:
        reasons = list(r.notes) + ([r.bandwidth_note] if r.bandwidth_note else [])
        if reasons:
            lines.append(f"WARNING: {r.kind} {r.shape} M={r.M} {r.mode} {r.format} act={r.act}: "
                         + "; ".join(reasons))
    return lines


def bandwidth_warnings(start: dict, end: dict, max_change: float = 1.25) -> List[str]:
    """Warnings when the DRAM read bandwidth, the reference of DRAM%, was measured while the
    machine was busy: its reps spread, or it changed between the start and the end."""
    lines = []
    for when, bw in (("start", start), ("end", end)):
        if bw.get("noisy"):
            lines.append(f"WARNING: the DRAM read bandwidth measured at the {when} is noisy "
                         f"({'; '.join(bw.get('reasons', []))}): DRAM% may be off")
    hi, lo = max(start["best"], end["best"]), min(start["best"], end["best"])
    if lo > 0 and hi / lo > max_change:
        lines.append(f"WARNING: the DRAM read bandwidth changed during the run ({start['best']:.1f}"
                     f" GB/s at the start, {end['best']:.1f} at the end): other work shared "
                     f"the memory; DRAM% and the cold rows may be off")
    return lines


def attach_ratios(results: List[Result], dram_gbs: float) -> None:
    """DRAM fractions (and their validity), and ratios to dense where a row has none yet
    (rows from bench_group carry their per-round ratios)."""
    dense = {(r.shape, r.M, r.mode, r.format): r for r in results if r.kind == "dense"}
    for r in results:
        r.dram_fraction = r.weight_gbs / dram_gbs if dram_gbs > 0 else None
        r.bandwidth_note = None
        if r.mode == "cold" and r.dram_fraction is not None and r.dram_fraction > 1.0:
            r.bandwidth_note = (f"cold weights read at {100 * r.dram_fraction:.0f}% of the "
                                f"measured DRAM read bandwidth ({dram_gbs:.1f} GB/s) is "
                                f"impossible: the bandwidth was measured while the machine was "
                                f"busy, or the copies did not leave the cache")
        r.noisy = bool(r.notes) or r.bandwidth_note is not None
        if r.kind != "ternary":
            continue
        for dt, attr in (("float32", "vs_fp32"), ("bfloat16", "vs_bf16")):
            d = dense.get((r.shape, r.M, r.mode, dt))
            if d is not None and getattr(r, attr) is None:
                setattr(r, attr, d.median_us / r.median_us)


def check_targets(results: List[Result], dram_gbs: float) -> List[str]:
    """The x86 performance goals of benchmarks/results/cpu.md (2 threads, act=int8, i2, M=1 unless
    said), where measured. A line whose row is flagged says so."""
    lines = []

    def add(r, ok, text):
        lines.append(f"{'PASS' if ok else 'MISS'} {text}"
                     + (" (noisy row: see the warnings)" if r.noisy else ""))

    def rng(v):
        return f" [{v[0]:.2f}-{v[1]:.2f} over the rounds]" if v else ""

    t = [r for r in results if r.kind == "ternary" and r.format == "i2"]
    cold1 = [r for r in t if r.act == "int8" and r.M == 1 and r.mode == "cold"]
    for r in cold1:
        add(r, r.dram_fraction is not None and r.dram_fraction >= 0.9,
            f"cold i2 int8 M=1 {r.shape}: {100 * (r.dram_fraction or 0):.0f}% of DRAM read "
            f"bandwidth (target 90%)")
    for r in t:
        if r.act == "int8" and r.M == 1 and r.mode == "hot" and r.shape == "4096x4096":
            add(r, r.gops >= 400, f"hot i2 int8 M=1 4096x4096: {r.gops:.0f} GOP/s (target 400)")
    for r in cold1:
        if r.vs_bf16 is not None:
            add(r, r.vs_bf16 >= 10, f"cold i2 int8 M=1 {r.shape}: {r.vs_bf16:.1f}x"
                f"{rng(r.vs_bf16_range)} dense bf16 F.linear (target 10x)")
    for r in t:
        if r.act == "int8" and r.M == 128 and r.vs_bf16 is not None:
            add(r, r.vs_bf16 >= 1.5, f"{r.mode} i2 int8 M=128 {r.shape}: {r.vs_bf16:.2f}x"
                f"{rng(r.vs_bf16_range)} dense bf16 throughput (target 1.5x)")
    for r in t:
        if r.act == "none" and r.M == 1 and r.mode == "cold" and r.dram_fraction is not None:
            add(r, r.dram_fraction >= 0.5, f"cold i2 none M=1 {r.shape}: "
                f"{100 * r.dram_fraction:.0f}% of the DRAM floor (target 50%)")
    return lines


def plot_roofline(results: List[Result], dram_gbs: float, path: str, title: str) -> None:
    plt = require_matplotlib("--plot")
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
    ap.add_argument("--rounds", type=int, default=5,
                    help="rounds that alternate the variants of a shape/M/mode (dense and "
                         "ternary); ratios to dense are taken per round (default 5)")
    ap.add_argument("--grad-mode", action="store_true",
                    help="time with autograd enabled instead of under torch.inference_mode()")
    ap.add_argument("--quick", action="store_true",
                    help="i2, act=int8, M=1, 2560x2560 and 4096x4096, hot and cold")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--plot", default=None,
                    help="write a roofline plot (PNG; needs matplotlib: the 'bench' extra)")
    ap.add_argument("--targets", action="store_true",
                    help="print the x86 performance goals (benchmarks/results/cpu.md) as "
                         "PASS/MISS lines")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.m, args.formats, args.act = "2560x2560,4096x4096", "1", "i2", "int8"
    return args


def run_all(shapes, ms, modes, dense, fmts, acts, device, args, cold_bytes, results) -> None:
    for (N, K) in shapes:
        for M in ms:
            for mode in modes:
                group = bench_group(N, K, M, mode, dense, fmts, acts, device, args, cold_bytes)
                results += group
                for r in group:
                    print(f"  {r.shape} M={M} {mode} {r.format} act={r.act}: median "
                          f"{r.median_us:.1f} us (IQR {r.q1_us:.1f}-{r.q3_us:.1f})"
                          f"{' noisy' if r.noisy else ''}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        require_matplotlib("--plot")  # before the run, not after it
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
    print(f"# DRAM read bandwidth (sum over {bw_bytes / gib:.1f} GiB, 7 reps) at the start: "
          f"median {bw0['median']:.1f} GB/s (worst {bw0['worst']:.1f}, best {bw0['best']:.1f})")
    for line in legend(args.rounds, cold_bytes):
        print(line)

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
    print(f"# DRAM read bandwidth at the end: median {bw1['median']:.1f} GB/s (worst "
          f"{bw1['worst']:.1f}, best {bw1['best']:.1f}); DRAM% below is of {dram:.1f} GB/s")
    attach_ratios(results, dram)
    print_table(results)
    warnings = bandwidth_warnings(bw0, bw1) + row_warnings(results)
    print_warnings(warnings, "# no row flagged")
    targets = check_targets(results, dram) if args.targets else []
    for line in targets:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": [asdict(r) for r in results],
                       "targets": targets, "warnings": warnings}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot_roofline(results, dram, args.plot,
                      f"{info['device_name']}, {info['threads']} threads, {info['cpu_kernel']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
