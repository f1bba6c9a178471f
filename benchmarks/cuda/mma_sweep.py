"""Tile sweep of the large-M GEMMs (ternary_ops/cuda_mma.py): for each shape and M, the time of
the configuration cuda_mma._plan picks against the alternatives and dense bf16, so the plan's
rules can be checked against measurements. act="int8" times the GEMM alone on a quantized x
(the op's pre-pass is not included); act="none" times it on bf16 x. "op" is the whole op on
bf16 x as a caller gets it (pre-pass included, on whichever kernel the op routes the call
to). The plan's configuration is starred; ratios are dense bf16's time over the candidate's.
Every time is bench.py's: CUDA graphs of calls over weight copies of 4x the L2.

Usage on a CUDA GPU: python benchmarks/cuda/mma_sweep.py [--m 64 128 ...] [--shapes NxK ...]
[--acts int8 none] [--both-forms] (the sm_90 kernel's candidates warp-specialized and not; "/ws"
marks the first form) [--forms 4 ws8 ws8w8 ...] (instead: each sm_90 candidate in these forms,
"ws" or not, the ring's slots, and "w8" for two warpgroups or "n64" for 64-row weight tiles;
"/st" gives the slots where they are not 4, "/w8" the two warpgroups) [--heights 16 32 ...]
(the sm_90 candidates' tile heights, instead of those near M) [--plan-tile] (only the plan's
tile and split, in each of --forms) [--compile-only] (each candidate launched once, untimed: run
one such process per shape at once first, and the timed run finds every kernel compiled)

Without a GPU: python benchmarks/cuda/mma_sweep.py --score LOG ... [--sms 132] checks this
version's plan against earlier sweeps' printed rows (benchmarks/data/cuda_mma_sweep_*.log).
"""
import argparse
import functools
import re

import torch
import triton

from bench import SHAPES, time_rotating  # beside this script
from profile_target import l2_size, n_copies
from ternary_ops import cuda_mma

LLAMA = [(14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]
DEFAULT_SHAPES = list(dict.fromkeys(SHAPES + LLAMA))  # each once (two are in both)
TAGS = {"wgmma": "wg", "portable": "tl"}
REPLAYS = 10


def _candidates(plan, m, w_rows, k, bk, sms, both_forms, forms=None, heights=None,
                plan_tile=False):
    """The plan and the configurations around it, K split into at most k // bk pieces: for the
    sm_90 kernel every tile height (rows of x) near M, with K unsplit, split as planned or in 4,
    each also in the other form (warp-specialized or not) if both_forms, else only the plan
    (forms: each in these (ws, stages, warps, bn) instead; heights: these instead of those near M;
    plan_tile: only the plan's tile and split, in each form);
    for the portable kernel 3 stages, and tiles of 64 and 128 rows with K unsplit, split in 2
    or 4, or as cuda_mma._split would."""
    out = [plan]
    if plan.kernel == "portable":
        out.append(plan._replace(stages=3))
        tiles = [(bm, split) for bm in (64, 128) for split in sorted(
            {1, 2, 4, cuda_mma._split(triton.cdiv(m, bm) * triton.cdiv(w_rows, 32), k // bk, sms)})]
    elif plan_tile:
        tiles = []
    else:
        heights = heights or [h for h in (16, 32, 64, 128)
                              if min(m / 2, 64) <= h <= max(2 * m, 64)]
        tiles = [(bm, split) for bm in heights for split in sorted({1, plan.split_k, 4})]
    if plan.kernel != "wgmma":
        forms = [(plan.ws, plan.stages, plan.warps, plan.bn)]
    elif not forms:
        forms = [(plan.ws, plan.stages, plan.warps, plan.bn),
                 (not plan.ws, plan.stages, plan.warps, plan.bn)]
        forms = forms if both_forms else forms[:1]
    for bm, split in [(plan.bm, plan.split_k)] + tiles:
        for ws, stages, warps, bn in forms:
            c = plan._replace(bm=bm, split_k=split, ws=ws, stages=stages, warps=warps, bn=bn)
            if c not in out and split <= k // bk and _ring_bytes(c) <= SMEM_BYTES:
                out.append(c)
        if (bm, split) == (plan.bm, plan.split_k) and plan.kernel == "wgmma" and not plan_tile:
            c = plan._replace(ws=not plan.ws)  # the plan in the other form, always
            if c not in out:
                out.append(c)
    return out


SMEM_BYTES = 220 << 10  # what one sm_90 program may take, less the barriers' and the epilogue's


def _ring_bytes(c):
    """Shared memory of the sm_90 kernel's ring: per slot an x tile and a packed weight tile."""
    if c.kernel != "wgmma":
        return 0
    a_bytes = 1 if c.bk == 128 else 2  # k-step 128: int8 q; 64: bf16 / half x
    return c.stages * (c.bm * c.bk * a_bytes + c.bn // 4 * c.bk)


def _tag(c):
    """A configuration as the sweep prints it: kernel, tile, splits, then the ring's slots where
    they are not 4 (or for the portable kernel), "/ws" for the warp-specialized form and "/w8"
    for the sm_90 kernel's two warpgroups."""
    return (f"{TAGS[c.kernel]}{c.bm}x{c.bn}/s{c.split_k}"
            + (f"/st{c.stages}" if c.kernel == "portable" or c.stages != 4 else "")
            + ("/ws" if c.ws else "") + ("/w8" if c.kernel == "wgmma" and c.warps == 8 else ""))


LINE = re.compile(r"\s*(\d+)x(\d+)\s+M=(\d+)\s+(int8|none)\s.*?\|.*?\|(.*)")


def score(paths, sms):
    """This version's plan (the sm_90 kernel, i2 weights, sms SMs) against sweep logs, without a
    GPU: for each logged row, the plan the sweep ran (starred), the plan this version gives and
    the best candidate, as dense bf16's time over theirs ("--" where the log has no time for
    this version's pick). Lines starting with '#', and rows without a starred plan, are
    skipped. Returns the rows."""
    rows = []
    for path in paths:
        with open(path) as f:
            lines = f.readlines()
        for text in lines:
            hit = None if text.startswith("#") else LINE.match(text)
            cands = re.findall(r"(\*?)(\S+) ([\d.]+)x", hit[5]) if hit else []
            then = next((tag for star, tag, _ in cands if star), None)
            if then is None:
                continue
            n, k, m, act = int(hit[1]), int(hit[2]), int(hit[3]), hit[4]
            ratios = {tag: float(r) for _, tag, r in cands}
            now = _tag(cuda_mma._wgmma_plan(m, (n + 3) // 4, k, act == "int8", sms))
            best = max(ratios, key=ratios.get)
            rows.append((f"{n}x{k}", m, act, then, ratios[then], now, ratios.get(now), best,
                         ratios[best]))
    for shape, m, act, then, r_then, now, r_now, best, r_best in rows:
        got = f"{r_now:.2f}x" if r_now is not None else "--"
        print(f"{shape:>11} M={m:<4} {act:4} swept plan {then} {r_then:.2f}x | plan now {now} "
              f"{got} | best {best} {r_best:.2f}x")
    timed = [r for r in rows if r[6] is not None]
    if timed:
        worst = min(r[6] / r[8] for r in timed)
        print(f"{len(timed)} of {len(rows)} rows timed this plan: at {worst:.2f}-1.00 of the "
              f"best candidate, {sum(r[6] >= r[4] for r in timed)} at or above the swept plan")
    return rows


def _form(text):
    """--forms entry as (ws, stages, warps, bn): "ws8" (warp-specialized, 8 slots), "4" (not, 4
    slots), either with "w8" after it for 128 weight rows on two warpgroups ("ws8w8", "4w8") or
    "n64" for 64 weight rows on one ("ws8n64")."""
    hit = re.fullmatch(r"(ws)?(\d+)(w8|n64)?", text)
    if not hit:
        raise argparse.ArgumentTypeError(
            f"expected a form such as 4, ws8, ws8w8 or ws8n64, got {text!r}")
    return bool(hit[1]), int(hit[2]), 8 if hit[3] == "w8" else 4, 64 if hit[3] == "n64" else 128


def _run_once(fn, copies):
    """--compile-only's stand-in for bench.time_rotating: one untimed call."""
    fn(copies[0])
    return 1.0, 1.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 2048])
    ap.add_argument("--shapes", nargs="+", default=None)
    ap.add_argument("--acts", nargs="+", default=["int8", "none"])
    ap.add_argument("--both-forms", action="store_true",
                    help="every sm_90 candidate warp-specialized and not (else only the plan)")
    ap.add_argument("--forms", type=_form, nargs="+", default=None,
                    help="every sm_90 candidate in these forms: ws8 = warp-specialized with 8 "
                    "ring slots, 4 = not, with 4; after either w8: 128 weight rows on two "
                    "warpgroups, n64: 64 weight rows")
    ap.add_argument("--heights", type=int, nargs="+", default=None,
                    help="the sm_90 candidates' tile heights (rows of x)")
    ap.add_argument("--plan-tile", action="store_true",
                    help="only the plan's tile and split, in each of --forms (an A/B of forms)")
    ap.add_argument("--compile-only", action="store_true",
                    help="launch each candidate once, untimed: fills Triton's cache, so that "
                    "several such runs at once (one per shape) spare the timed run compiling")
    ap.add_argument("--score", nargs="+", default=None, metavar="LOG",
                    help="no timing: this version's plan against these sweep logs")
    ap.add_argument("--sms", type=int, default=132, help="--score: the SMs of the logs' GPU")
    args = ap.parse_args()
    if args.score:
        score(args.score, args.sms)
        return
    shapes = ([tuple(map(int, s.split("x"))) for s in args.shapes] if args.shapes
              else DEFAULT_SHAPES)
    timed = (_run_once if args.compile_only else functools.partial(
        time_rotating, l2_bytes=None, bytes_per_call=None, replays=REPLAYS))
    props = torch.cuda.get_device_properties(0)
    sms, l2 = props.multi_processor_count, l2_size(props)
    for n, k in shapes:
        r = (n + 3) // 4
        # weights and dense weights both rotate over copies of 4x the L2, as in bench.py
        copies = 1 if args.compile_only else n_copies(r * k, l2)
        ws = [torch.randint(0, 256, (r, k), dtype=torch.uint8, device="cuda") & 0x55
              for _ in range(copies)]
        wd = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
              for _ in range(1 if args.compile_only else n_copies(2 * n * k, l2))]
        scale = torch.rand(n, device="cuda") + 0.5
        for m in args.m:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            q = torch.randint(-127, 128, (m, (k + 63) // 64 * 64), dtype=torch.int8,
                              device="cuda")
            inv = torch.rand(m, device="cuda") + 1
            qsum = q[:, :k].sum(1, dtype=torch.int32)
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            dense = timed(lambda w: torch.nn.functional.linear(x, w), wd)[0]
            for act in args.acts:
                int8 = act == "int8"
                a = q if int8 else x
                plan = cuda_mma._plan(a, ws[0], m, int8, False)
                def op(w, act=act):
                    torch.ops.ternary.linear_i2(x, w, scale, n, None, act)
                t_op = timed(op, ws)[0]
                line = (f"{n:>5}x{k:<5} M={m:<4} {act:4} dense {dense * 1e6:7.1f} us | op "
                        f"{dense / t_op:.2f}x |")
                for c in _candidates(plan, m, r, k, plan.bk, sms, args.both_forms, args.forms,
                                     args.heights, args.plan_tile):
                    def run(w, c=c):
                        cuda_mma._launch(a, inv if int8 else None, qsum if int8 else None, w,
                                         scale, n, None, out, int8, False, c)
                    t = timed(run, ws)[0]
                    line += f" {'*' if c == plan else ''}{_tag(c)} {dense / t:.2f}x"
                if args.compile_only:
                    torch.cuda.synchronize()
                    continue
                print(line, flush=True)


if __name__ == "__main__":
    main()
