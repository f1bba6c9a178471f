"""End-to-end decode benchmark: a BitNet-b1.58-2B-shaped transformers model with TernaryLinear
(i2, act=int8) against the same model with dense bfloat16 nn.Linear, on the CPU.

    python benchmarks/e2e/decode.py                        # 2B shape, 2 threads, both variants
    python benchmarks/e2e/decode.py --layers 2 --tokens 8  # quick smoke run
    python benchmarks/e2e/decode.py --markdown out.md      # also write the results table

Recorded results: benchmarks/results/e2e.md.

Each variant runs in its own process (peak RSS is per variant and only one model is in memory
at a time). The model is transformers' BitNetForCausalLM built from a config (30 layers, hidden
2560, intermediate 6912, 20 heads, 5 KV heads, relu2) with random ternary weights (uniform over
{-1, 0, 1}, one scale per tensor); the dense variant holds the same weights dequantized to
bfloat16. Embeddings, norms and lm_head are bfloat16 in both. Decode is greedy with the
transformers KV cache (DynamicCache), one token per step after a prompt prefill; tokens/s is the
median over the timed steps.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(args, variant):
    import torch
    import transformers
    from accelerate import init_empty_weights
    from torch import nn

    import ternary_ops as tops
    from ternary_ops.formats import packed_rows

    config = transformers.BitNetConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    with init_empty_weights(include_buffers=False):  # no dense weights are ever allocated
        model = transformers.BitNetForCausalLM(config)
    gen = torch.Generator().manual_seed(args.seed)
    # Random i2 bytes drawn from the 81 bytes whose four codes are all valid: as fast as
    # randint, no unpacked intermediate; the dense variant unpacks the very same bytes.
    codes = torch.arange(256)
    valid = codes[((codes[:, None] >> torch.tensor([0, 2, 4, 6])) & 3 != 3).all(1)]
    valid = valid.to(torch.uint8)
    linear_bytes = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        n, k = module.out_features, module.in_features
        packed = valid[torch.randint(0, len(valid), (packed_rows(n), k), generator=gen)]
        scale = torch.tensor(0.02 + 0.01 * torch.rand((), generator=gen).item())
        if variant == "ternary":
            layer = tops.TernaryLinear(k, n, bias=False, format="i2", act="int8", device="meta")
            layer.weight, layer.weight_scale = packed, scale
            linear_bytes += layer.weight_bytes()
        else:
            layer = nn.Linear(k, n, bias=False, device="meta")
            dense = (tops.unpack_i2(packed, n).to(torch.bfloat16) * scale.to(torch.bfloat16))
            layer.weight = nn.Parameter(dense, requires_grad=False)
            linear_bytes += dense.numel() * dense.element_size()
        model.set_submodule(name, layer)
    for module in model.modules():  # embeddings, norms, lm_head
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            if p.dim() == 1:
                data = torch.ones(p.shape, dtype=torch.bfloat16)
            else:
                data = torch.randn(p.shape, generator=gen, dtype=torch.bfloat16) * 0.02
            setattr(module, pname, nn.Parameter(data, requires_grad=False))
    return model.eval(), linear_bytes


def run_variant(args, variant) -> dict:
    import torch
    from transformers import DynamicCache

    import ternary_ops as tops
    from ternary_ops.hf import cache_kwargs

    torch.set_num_threads(args.threads)
    if args.kernel:
        tops.select_cpu_kernel(args.kernel)
    t0 = time.perf_counter()
    model, linear_bytes = build_model(args, variant)
    build_s = time.perf_counter() - t0
    rss_model = _rss_bytes()
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(3, args.vocab, (1, args.prompt), generator=gen)
    steps = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        t0 = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True, **cache_kwargs(model, cache))
        prefill_s = time.perf_counter() - t0
        token = out.logits[:, -1:].argmax(-1)
        tokens = []
        for i in range(args.warmup + args.tokens):
            t0 = time.perf_counter()
            out = model(input_ids=token, use_cache=True, **cache_kwargs(model, cache))
            token = out.logits[:, -1:].argmax(-1)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                steps.append(dt)
            tokens.append(int(token))
    med = statistics.median(steps)
    return {
        "variant": variant, "kernel": tops.cpu_kernel(), "threads": torch.get_num_threads(),
        "build_s": build_s, "prefill_s": prefill_s, "prompt": args.prompt,
        "decode_tokens": len(steps), "median_step_s": med, "tokens_per_s": 1.0 / med,
        "min_step_s": min(steps), "linear_weight_bytes": linear_bytes,
        "rss_after_build_bytes": rss_model, "peak_rss_bytes": _peak_rss_bytes(),
        "tokens": tokens,
    }


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = fields.get("Model name", "?").strip()
        flags = fields.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
               if f in flags.split()]
        return (f"{cpu}, {fields.get('CPU(s)', '?').strip()} CPUs, "
                f"{fields.get('L3 cache', '?').strip()} L3, ISA: {' '.join(isa)}")
    except (OSError, subprocess.CalledProcessError, ValueError):
        return platform.processor() or platform.machine()


def _gib(n):
    return f"{n / 2**30:.2f} GiB"


def markdown(args, results) -> str:
    import torch
    import transformers

    shape = (f"{args.layers} layers, hidden {args.hidden}, intermediate {args.intermediate}, "
             f"{args.heads} heads / {args.kv_heads} KV heads, vocab {args.vocab}")
    lines = [
        "# End-to-end decode: BitNet-2B-shaped model, TernaryLinear vs dense bfloat16",
        "",
        f"Command: `python benchmarks/e2e/decode.py {' '.join(sys.argv[1:])}`",
        "",
        f"* Machine: {machine()}",
        f"* torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{args.threads} threads",
        f"* Model: transformers `BitNetForCausalLM`, {shape}; random ternary weights. "
        f"Prompt {args.prompt} tokens, then {args.tokens} timed greedy decode steps "
        f"(after {args.warmup} warm-up steps) with the KV cache.",
        "",
        "| variant | CPU kernel | linear weights | RSS after build | peak RSS | prefill (s) "
        "| decode tokens/s | median step (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = ("TernaryLinear i2, act=int8" if r["variant"] == "ternary"
                else "dense bf16 nn.Linear")
        lines.append(f"| {name} | {r['kernel'] if r['variant'] == 'ternary' else '-'} "
                     f"| {_gib(r['linear_weight_bytes'])} | {_gib(r['rss_after_build_bytes'])} "
                     f"| {_gib(r['peak_rss_bytes'])} | {r['prefill_s']:.2f} "
                     f"| {r['tokens_per_s']:.2f} | {1000 * r['median_step_s']:.1f} |")
    by = {r["variant"]: r for r in results}
    if {"ternary", "dense"} <= set(by):
        t, d = by["ternary"], by["dense"]
        lines += ["", f"Decode speed-up of ternary over dense bf16: "
                  f"**{t['tokens_per_s'] / d['tokens_per_s']:.2f}x**; peak memory "
                  f"{d['peak_rss_bytes'] / t['peak_rss_bytes']:.2f}x smaller."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--intermediate", type=int, default=6912)
    p.add_argument("--heads", type=int, default=20)
    p.add_argument("--kv-heads", type=int, default=5)
    p.add_argument("--vocab", type=int, default=32000,
                   help="vocabulary (BitNet-2B-4T has 128256; reduced by default: the dense "
                        "bf16 embedding and lm_head are the same in both variants)")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32, help="timed decode steps")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", default=None, help="force a CPU kernel set (default: best)")
    p.add_argument("--variants", default="ternary,dense")
    p.add_argument("--markdown", default=None, help="write the results table to this file")
    p.add_argument("--json", default=None, help="write raw results to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(args, args.child)))
        return 0
    results = []
    for variant in args.variants.split(","):
        if variant not in ("ternary", "dense"):
            p.error(f"unknown variant {variant!r}")
        # one process per variant: separate peak RSS, one model in memory at a time
        cmd = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]),
               "--child", variant]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return out.returncode
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{variant:8s} kernel={r['kernel']:12s} {r['tokens_per_s']:7.2f} tok/s  "
              f"step {1000 * r['median_step_s']:7.1f} ms  prefill {r['prefill_s']:.2f} s  "
              f"peak RSS {_gib(r['peak_rss_bytes'])}  (built in {r['build_s']:.1f} s)",
              flush=True)
    text = markdown(args, results)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
