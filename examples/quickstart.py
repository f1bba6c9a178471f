"""Quickstart: convert a model to ternary weights, check it, and compare speed and memory.

    python examples/quickstart.py [--hidden 1024] [--layers 4] [--threads N]

1. Builds a small decoder-style model with dense nn.Linear layers.
2. `ternary_ops.convert(model)` replaces them with TernaryLinear (2-bit packed, int8 activations).
3. Checks the converted model against the same model with the dequantized weights in dense
   nn.Linear layers (the kernels' job: agreement to float rounding), and reports how close it
   stays to the original dense model (the quantization's effect).
4. Prints a speed/memory table for batch-1 decoding (one token at a time).
"""
import argparse
import copy
import textwrap
import time

import torch
from torch import nn

import ternary_ops as tops
from ternary_ops.bench import noise_warnings, spread


class MLPBlock(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.norm = nn.RMSNorm(d) if hasattr(nn, "RMSNorm") else nn.LayerNorm(d)
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class TinyDecoder(nn.Module):
    def __init__(self, vocab=1000, d=512, hidden=1024, layers=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(*[MLPBlock(d, hidden) for _ in range(layers)])
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        return self.lm_head(self.blocks(self.embed(ids)))


def time_alternating(fns, rounds=15, calls=3, warmup=3):
    """Per-call seconds of each fn, timed in alternation (A, B, C, A, B, C, ...) so that every
    variant sees the same machine; returns one list of samples per fn."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples = [[] for _ in fns]
    for _ in range(rounds):
        for fn, out in zip(fns, samples):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) / calls)
    return samples


def linear_bytes(model):
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, tops.TernaryLinear):
            total += m.weight_bytes()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1024, help="model width")
    ap.add_argument("--hidden", type=int, default=2816, help="MLP width")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dense = TinyDecoder(d=args.d, hidden=args.hidden, layers=args.layers).eval()
    dense_bf16 = copy.deepcopy(dense).to(torch.bfloat16)
    ternary = copy.deepcopy(dense)
    summary = tops.convert(ternary)  # i2 weights, int8 activations; lm_head stays dense
    print(summary)
    print(f"CPU kernels: {tops.cpu_kernel()} (available: {', '.join(tops.cpu_kernels_available())})")

    # The same model with each ternary layer's dequantized weight in a dense nn.Linear.
    dequant = copy.deepcopy(dense)
    for name in summary.replaced:
        parent, _, child = name.rpartition(".")
        lin = dequant.get_submodule(parent).get_submodule(child)
        with torch.no_grad():
            lin.weight.copy_(ternary.get_submodule(name).dequantize())

    ids = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        tops_set = [m for m in ternary.modules() if isinstance(m, tops.TernaryLinear)]
        for m in tops_set:
            m.act = "none"  # exact w.r.t. the ternary weights: compare kernels to dense matmul
        y_t, y_q = ternary(ids), dequant(ids)
        kernel_err = ((y_t - y_q).abs().max() / y_q.abs().max()).item()
        for m in tops_set:
            m.act = "int8"
        y_t8, y_d = ternary(ids), dense(ids)
        agree = torch.nn.functional.cosine_similarity(y_t8.flatten(), y_d.flatten(), dim=0).item()
    print(f"check: ternary kernels vs dense matmul on the dequantized weights, max rel. error "
          f"{kernel_err:.2e} ({'OK' if kernel_err < 1e-4 else 'MISMATCH'})")
    print(f"       converted vs original dense model (random weights, quantization effect): "
          f"cosine similarity of logits {agree:.3f}")
    if kernel_err >= 1e-4:
        raise SystemExit("kernel check failed")

    tok = torch.randint(0, 1000, (1, 1))
    variants = [("dense fp32", dense), ("dense bf16", dense_bf16),
                ("ternary i2 (act=int8)", ternary)]
    with torch.inference_mode():
        samples = time_alternating([lambda m=m: m(tok) for _, m in variants])
    spreads = {label: spread(t) for (label, _), t in zip(variants, samples)}
    base = spreads["dense fp32"].median
    print("\n" + textwrap.fill(f"timed: one batch-1 decode step (M = 1, one token through {args.layers} blocks, "
          f"d={args.d}, hidden={args.hidden}), {torch.get_num_threads()} threads; the ternary "
          "model runs act='int8' (the check above used act='none' on a 16-token prompt). The "
          "weights are hot (the same small model every call, so they stay in cache): decode of a "
          "model larger than the cache is slower and more memory-bound. Variants alternate "
          "within each of 15 rounds; speed-ups are ratios of medians.", 100))
    print(f"{'model':<24}{'ms/token: median (min, max, IQR)':>40}{'speedup':>10}"
          f"{'linear weights':>16}")
    for label, model in variants:
        sp = spreads[label]
        print(f"{label:<24}{sp.format():>40}{base / sp.median:>9.2f}x"
              f"{linear_bytes(model) / 2**20:>12.1f} MiB")
    for line in noise_warnings(spreads):
        print(line)


if __name__ == "__main__":
    main()
