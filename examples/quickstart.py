"""Quickstart: convert a model to ternary weights, check it, and compare speed and memory.

    python examples/quickstart.py [--d 1024] [--hidden 2816] [--layers 4] [--threads N]

1. Builds a small decoder-style model with dense nn.Linear layers.
2. `ternary_ops.convert(model)` replaces them with TernaryLinear (2-bit packed, int8 activations).
3. Checks the converted model: with act="none" on a 16-token prompt (M = 16), against the same
   model with the dequantized weights in dense nn.Linear layers (agreement to float rounding);
   with act="int8" on one token (M = 1, the configuration timed in 4), against the same layers
   evaluated by `ternary_ops.reference` (bit for bit); and how close it stays to the original
   dense model (the quantization's effect).
4. Times a batch-1 decode step (one token through the whole model, M = 1, act="int8") of the
   dense float32, dense bfloat16 and ternary models in alternating rounds, and prints each
   time with its spread, the speed-ups as per-round ratios with their range, and a warning
   when the spread says the machine was busy.
"""
import argparse
import copy

import torch
from torch import nn

import ternary_ops as tops
from ternary_ops import bench


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


class ReferenceLinear(nn.Module):
    """A TernaryLinear's weights, scale, bias and act evaluated by ternary_ops.reference."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        t = self.layer
        if t.format == "i2":
            return tops.reference.linear_i2(x, t.weight, t.weight_scale, t.out_features, t.bias,
                                            t.act)
        return tops.reference.linear_i8(x, t.weight, t.weight_scale, t.bias, t.act)


def replace_layers(model, names, make):
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(model.get_submodule(name)))


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
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    ap.add_argument("--budget", type=float, default=1.0,
                    help="seconds of timed calls per model, over all rounds (default 1)")
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

    # The same model with each ternary layer's dequantized weight in a dense nn.Linear, and
    # with each ternary layer evaluated by the plain-torch reference.
    dequant = copy.deepcopy(dense)
    for name in summary.replaced:
        with torch.no_grad():
            dequant.get_submodule(name).weight.copy_(ternary.get_submodule(name).dequantize())
    reference = copy.deepcopy(ternary)
    replace_layers(reference, summary.replaced, ReferenceLinear)

    prompt = torch.randint(0, 1000, (1, 16))
    tok = torch.randint(0, 1000, (1, 1))
    with torch.no_grad():
        layers = [m for m in ternary.modules() if isinstance(m, tops.TernaryLinear)]
        for m in layers:
            m.act = "none"  # float activations: exact w.r.t. the ternary weights
        y_t, y_q = ternary(prompt), dequant(prompt)
        kernel_err = ((y_t - y_q).abs().max() / y_q.abs().max()).item()
        for m in layers:
            m.act = "int8"  # back to the converted default, which is what is timed below
        y_t8, y_r8 = ternary(tok), reference(tok)
        exact = torch.equal(y_t8, y_r8)
        agree = torch.nn.functional.cosine_similarity(
            ternary(prompt).flatten(), dense(prompt).flatten(), dim=0).item()
    print(f"check 1, act=\"none\", 16-token prompt (M=16): ternary kernels vs dense matmul on the "
          f"dequantized weights, max rel. error {kernel_err:.2e} "
          f"({'OK' if kernel_err < 1e-4 else 'MISMATCH'})")
    print(f"check 2, act=\"int8\", one token (M=1, as timed below): ternary kernels vs "
          f"ternary_ops.reference, {'bit for bit equal (OK)' if exact else 'MISMATCH'}")
    print(f"quantization effect (random weights), act=\"int8\", 16-token prompt: converted vs "
          f"original dense model, cosine similarity of logits {agree:.3f}")
    if kernel_err >= 1e-4 or not exact:
        raise SystemExit("kernel check failed")

    models = {"dense fp32": dense, "dense bf16": dense_bf16, "ternary i2 act=int8": ternary}
    nbytes = {label: linear_bytes(model) for label, model in models.items()}
    with torch.inference_mode():
        cmp = bench.compare({label: (lambda m=model: m(tok)) for label, model in models.items()},
                            rounds=args.rounds, warmup=3, min_reps=5 * args.rounds,
                            max_reps=100000, budget_s=args.budget)
    print(f"\ntimed: a batch-1 decode step (one token, M=1, through all {args.layers} blocks and "
          f"the dense lm_head), d={args.d}, hidden={args.hidden}, {torch.get_num_threads()} "
          f"threads, kernel set {tops.cpu_kernel()}")
    print("  hot weights: each model is called over and over, so its weights stay in cache as "
          "far as they fit (a decoder bigger than the cache streams them from memory: "
          "python -m ternary_ops.bench --modes cold)")
    print(f"  {args.rounds} rounds alternate the three models; speed-up = dense fp32 time / "
          f"model time per round: median (min-max over the rounds)")
    print(f"{'model':<21}{'ms/token: median':>17}{'min':>8}{'IQR':>16}{'max':>8}{'calls':>7}  "
          f"{'speed-up vs dense fp32':<32}{'linear weights':>14}")
    warnings = []
    for label in models:
        t = cmp.timings[label]
        if label == "dense fp32":
            ratio = "1 (baseline)"
        else:
            s = cmp.speedup(label, over="dense fp32")
            ratio = bench.format_ratio(s)
            warnings += bench.warning_lines(f"{label} speed-up", s)
        warnings += bench.warning_lines(f"{label} time", t)
        ms = lambda v: f"{1e3 * v:.3f}"  # noqa: E731
        print(f"{label:<21}{ms(t.median):>17}{ms(t.min):>8}{ms(t.q1) + '-' + ms(t.q3):>16}"
              f"{ms(t.max):>8}{t.n:>7}  {ratio:<32}{nbytes[label] / 2**20:>10.1f} MiB")
    bench.print_warnings(warnings)


if __name__ == "__main__":
    main()
