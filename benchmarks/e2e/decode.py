"""End-to-end decode benchmark: a transformers model with TernaryLinear layers (i2, act="int8"),
and optionally the same model with dense bfloat16 nn.Linear, eager or compiled, on cpu, cuda or
mps.

    python benchmarks/e2e/decode.py --vs-dense                          # BitNet-2B shape, CPU
    python benchmarks/e2e/decode.py --device cuda --mode eager,compiled --vs-dense
    python benchmarks/e2e/decode.py --shape llama-8b --layers 2 --tokens 8   # a quick run
    python benchmarks/e2e/decode.py --markdown out.md --json out.json

Recorded results: benchmarks/results/e2e.md.

Every (round, mode, variant) runs in its own process, one after the other: round 1 runs every
variant, then round 2, and so on, so the variants alternate in the same window and no process
inherits another's caches (allocator, compiled graphs, attention plans). Each process builds the
model from a config with random ternary weights (uniform over {-1, 0, 1}, one scale per tensor;
the dense variant holds exactly those weights in bfloat16), measures the device's read bandwidth,
prefills a prompt, and times greedy decode steps with batch 1:

* eager: the transformers model called step by step with a DynamicCache;
* compiled: a StaticCache and the decode step under ``torch.compile`` with
  ``ternary_ops.hf.compile_kwargs(device)``: ``fullgraph=True`` and no guards on the model's
  module state (``--module-guards on`` keeps them), for both variants. On cuda the compiled
  step is captured in one CUDA graph by ``ternary_ops.hf.cuda_graph_step`` and replayed per
  token (``--cuda-graphs trees``: the graphs of ``mode="reduce-overhead"`` instead).

The ternary variant is built as ``convert()`` leaves a model: fused q/k/v and gate/up
(``--fuse off``), RMSNorms folded into the ternary layers they feed (``--fold-norms off``),
packed weights on 2 MiB pages on a Linux CPU (``--huge-pages off``).
Both variants use the attention ``convert()`` gives a transformers model
(``ternary_ops.hf.attention``; ``--attention stock`` for transformers' own SDPA). The prefill
computes the last position's logits only, as ``generate`` does. After one untimed prefill without
a cache (first-call costs) and one untimed prefill into a fresh cache (what a first call with a
cache pays), ``--prefills`` prefills each fill a fresh cache; their median is the prefill time.

Reported per mode and variant: tokens/s (median over rounds of each round's median step, with the
range over rounds), ms per token, prefill time, peak memory after the model is built (resident
set on the CPU, where Linux can reset its peak, else the process's whole peak; allocated memory
on CUDA; the driver's allocation on MPS), bytes read per token
(weights, head and KV cache) and the fraction of the streaming floor (those bytes at the
bandwidth measured in the same process) that the step reaches.
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

SHAPES = {
    # name: (architecture, layers, hidden, intermediate, heads, kv heads, tied head/embedding)
    "bitnet-2b": ("bitnet", 30, 2560, 6912, 20, 5, True),
    "llama-8b": ("llama", 32, 4096, 14336, 32, 8, False),
    "llama-70b": ("llama", 80, 8192, 28672, 64, 8, False),
}
VARIANTS = ("ternary", "dense")
MODES = ("eager", "compiled")


# ---- memory -----------------------------------------------------------------------------------

def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cpu" and sys.platform.startswith("linux"):
        import ctypes
        try:  # glibc keeps freed heap (the build's temporaries) mapped until trimmed
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    elif device == "cpu" and os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets the peak RSS (VmHWM)
            f.write("5")


def peak_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    if device == "mps":  # no peak counter: what the driver holds at the end
        return torch.mps.driver_allocated_memory()
    if os.path.exists("/proc/self/status"):
        return _proc_status_bytes("VmHWM")
    import resource
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def read_bandwidth(device: str) -> float:
    """Bytes/s of a plain reduction over a buffer far larger than the last-level cache (1.5 GiB
    on the CPU, 4 GiB on a GPU): the streaming rate the decode step is compared with."""
    import torch

    from ternary_ops.bench import read_bandwidth as measure

    nbytes = (3 << 29) if device == "cpu" else (4 << 30)
    gbs = measure(torch.device(device), nbytes)["median"]
    if device == "cuda":
        torch.cuda.empty_cache()
    return gbs * 1e9


# ---- the model --------------------------------------------------------------------------------

def model_config(args):
    import transformers

    arch, layers, hidden, inter, heads, kv, tied = SHAPES[args.shape]
    common = dict(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=inter,
                  num_hidden_layers=args.layers or layers, num_attention_heads=heads,
                  num_key_value_heads=kv, max_position_embeddings=8192, bos_token_id=1,
                  eos_token_id=2, pad_token_id=0, tie_word_embeddings=tied)
    if arch == "bitnet":
        return transformers.BitNetConfig(**common), transformers.BitNetForCausalLM
    return transformers.LlamaConfig(**common), transformers.LlamaForCausalLM


def build_model(args, variant: str):
    """The model on ``args.device`` with random ternary weights; returns ``(model, bytes)`` with
    the bytes of all linear weights except the head."""
    import torch
    from accelerate import init_empty_weights
    from torch import nn

    import ternary_ops as tops
    from ternary_ops.formats import packed_rows

    device = torch.device(args.device)
    config, cls = model_config(args)
    with init_empty_weights(include_buffers=False):  # no dense weights are ever allocated
        model = cls(config)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    # Random i2 bytes drawn from the 81 bytes whose four codes are all valid: no unpacked
    # intermediate; the dense variant unpacks the very same bytes.
    codes = torch.arange(256, device=device)
    shifts = torch.tensor([0, 2, 4, 6], device=device)
    valid = codes[((codes[:, None] >> shifts) & 3 != 3).all(1)].to(torch.uint8)
    linear_bytes = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name == "lm_head":
            continue
        n, k = module.out_features, module.in_features
        idx = torch.randint(0, len(valid), (packed_rows(n), k), generator=gen, device=device)
        packed = valid[idx]
        del idx
        scale = 0.02 + 0.01 * torch.rand((), generator=gen, device=device)
        if variant == "ternary":
            layer = tops.TernaryLinear(k, n, bias=False, format="i2", act="int8", device="meta")
            layer.weight, layer.weight_scale = packed, scale.float()
            linear_bytes += layer.weight_bytes()
        else:
            dense = tops.unpack_i2(packed, n).to(torch.bfloat16) * scale.to(torch.bfloat16)
            layer = nn.Linear(k, n, bias=False, device="meta")
            layer.weight = nn.Parameter(dense, requires_grad=False)
            linear_bytes += dense.numel() * dense.element_size()
            del packed
        model.set_submodule(name, layer)
    for module in model.modules():  # embeddings, norms, lm_head
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            if p.dim() == 1:
                data = torch.ones(p.shape, dtype=torch.bfloat16, device=device)
            else:
                data = torch.randn(p.shape, generator=gen, dtype=torch.bfloat16, device=device)
                data.mul_(0.02)
            setattr(module, pname, nn.Parameter(data, requires_grad=False))
    if config.tie_word_embeddings:  # the head got its own random weight above: tie it again
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    if variant == "ternary":
        dense_or = {"bf16": "dense", "int8": "int8"}
        tops.quantize_head_and_embedding(model, head=dense_or[args.head],
                                         embedding=dense_or[args.embedding])
        if args.fuse == "on":
            tops.fuse_projections(model)
        if args.fold_norms == "on":
            from ternary_ops.fuse import fold_norms
            fold_norms(model)
        if args.huge_pages == "on":
            tops.use_huge_pages(model)  # what convert() ends with (on the CPU, under Linux)
    if args.attention == "decode-safe":
        from ternary_ops.hf import use_decode_attention
        use_decode_attention(model)
    return model.to(device).eval(), linear_bytes


def kv_bytes_per_token(config, context: int) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * context * 2


# ---- one process: one mode, one variant ------------------------------------------------------

def run_child(args, mode: str, variant: str) -> dict:
    import torch
    from transformers import DynamicCache, StaticCache

    import ternary_ops as tops
    from ternary_ops.hf import cache_kwargs, cache_tensors, compile_kwargs, cuda_graph_step

    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
        if args.kernel:
            tops.select_cpu_kernel(args.kernel)
    bandwidth = read_bandwidth(device)
    t0 = time.perf_counter()
    model, linear_bytes = build_model(args, variant)
    sync(device)
    build_s = time.perf_counter() - t0
    # Peak memory from here on: the model plus what running it takes (building it from random
    # numbers has transients a checkpoint load does not).
    reset_peak_memory(device)
    config = model.config
    head = model.get_output_embeddings()
    head_bytes = head.weight.numel() * head.weight.element_size()  # int8 or bf16
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompt = torch.randint(3, args.vocab, (1, args.prompt), generator=gen).to(device)
    steps = args.warmup + args.tokens
    max_len = args.prompt + steps + 1
    with torch.inference_mode():
        model(input_ids=prompt, use_cache=False, logits_to_keep=1)  # first-call costs, untimed
        # Each prefill fills a fresh cache of the kind the decode uses. The first one is untimed:
        # it pays what only a first call with a cache pays (e.g. an attention backend's plan
        # for new tensors). The median of the others is the prefill time; the last cache is the
        # one decoded from.
        prefill_times = []
        for i in range(1 + args.prefills):
            cache = None  # the previous cache is freed before the next one is allocated
            cache = (DynamicCache(config=config) if mode == "eager"
                     else StaticCache(config=config, max_cache_len=max_len))
            kw = cache_kwargs(model, cache)
            sync(device)
            t0 = time.perf_counter()
            out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **kw)
            token = out.logits[:, -1:].argmax(-1)
            sync(device)
            if i > 0:
                prefill_times.append(time.perf_counter() - t0)
            del out
        prefill_s = statistics.median(prefill_times)

        if mode == "eager":
            def step(tok, pos):
                return model(input_ids=tok, use_cache=True, **kw).logits[:, -1:].argmax(-1)
        else:
            def decode(tok, pos):
                logits = model(input_ids=tok, position_ids=pos[None], cache_position=pos,
                               use_cache=True, **kw).logits
                return logits[:, -1:].argmax(-1)
            one_graph = device == "cuda" and args.cuda_graphs == "step"
            compiled = torch.compile(
                decode, **compile_kwargs(device, module_guards=args.module_guards == "on",
                                         cuda_graphs=not one_graph))
            if one_graph:
                compiled = cuda_graph_step(compiled, token,
                                           torch.tensor([args.prompt], device=device),
                                           state=cache_tensors(cache))

            def step(tok, pos):
                return compiled(tok, pos).clone()  # CUDA graphs reuse their output buffer

        times, tokens = [], []
        for i in range(steps):
            pos = torch.tensor([args.prompt + i], device=device)
            sync(device)
            t0 = time.perf_counter()
            token = step(token, pos)
            sync(device)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
            tokens.append(int(token))
    context = max_len if mode == "compiled" else args.prompt + args.warmup + args.tokens // 2
    kv_bytes = kv_bytes_per_token(config, context)
    med = statistics.median(times)
    return {
        "mode": mode, "variant": variant, "device": device,
        "kernel": tops.cpu_kernel() if device == "cpu" else device,
        "threads": torch.get_num_threads() if device == "cpu" else None,
        "build_s": build_s, "prefill_s": prefill_s, "prefill_times_s": prefill_times,
        "median_step_s": med,
        "step_s": times, "tokens": tokens, "linear_weight_bytes": linear_bytes,
        "head_bytes": head_bytes, "kv_bytes": kv_bytes,
        "bytes_per_token": linear_bytes + head_bytes + kv_bytes,
        "read_bandwidth": bandwidth, "peak_memory_bytes": peak_memory(device),
    }


# ---- the parent: rounds, summary, markdown ----------------------------------------------------

def machine(device: str) -> str:
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        cpu = fields.get("Model name", "?").strip()
        flags = fields.get("Flags", "").split()
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
               if f in flags]
        return (f"{cpu}, {fields.get('CPU(s)', '?').strip()} CPUs, "
                f"{fields.get('L3 cache', '?').strip()} L3, ISA: {' '.join(isa)}")
    except (OSError, subprocess.CalledProcessError, ValueError):
        return platform.processor() or platform.machine()


def summarize(runs: list) -> dict:
    tps = [1.0 / r["median_step_s"] for r in runs]
    best = runs[0]
    return {
        "mode": best["mode"], "variant": best["variant"], "kernel": best["kernel"],
        "rounds": len(runs), "tokens_per_s": statistics.median(tps),
        "tokens_per_s_range": [min(tps), max(tps)],
        "ms_per_token": 1000 * statistics.median(r["median_step_s"] for r in runs),
        "prefill_s": statistics.median(r["prefill_s"] for r in runs),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs),
        "bytes_per_token": best["bytes_per_token"],
        "read_bandwidth": statistics.median(r["read_bandwidth"] for r in runs),
        "floor_fraction": statistics.median(
            r["bytes_per_token"] / r["read_bandwidth"] / r["median_step_s"] for r in runs),
        "same_tokens": all(r["tokens"] == best["tokens"] for r in runs),
    }


def _gib(n):
    return f"{n / 2**30:.2f} GiB"


def markdown(args, summaries: list, argv) -> str:
    import torch
    import transformers

    arch, layers, hidden, inter, heads, kv, tied = SHAPES[args.shape]
    memory = {"cpu": "peak RSS", "cuda": "peak allocated", "mps": "driver allocated"}[args.device]
    lines = [
        f"Command: `python benchmarks/e2e/decode.py {' '.join(argv)}`",
        "",
        f"* Machine: {machine(args.device)}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}" + (f", {args.threads} threads" if args.device == "cpu"
                                         else ""),
        f"* Model: `{args.shape}` shape ({arch}), {args.layers or layers} layers, hidden {hidden}, "
        f"intermediate {inter}, {heads} heads / {kv} KV heads, vocabulary {args.vocab}, "
        f"head and embedding {'tied' if tied else 'untied'}; "
        f"ternary variant's head {args.head}, embedding {args.embedding} (bf16 in the dense "
        f"variant), bf16 norms; fused projections: {args.fuse}; folded norms: {args.fold_norms}; "
        f"attention: {args.attention}; "
        f"compiled with module guards {args.module_guards}"
        f"{f', CUDA graphs: {args.cuda_graphs}' if args.device == 'cuda' else ''}; "
        f"huge pages: {args.huge_pages}. "
        f"Prompt {args.prompt} tokens, then {args.tokens} timed greedy steps after "
        f"{args.warmup} warm-up steps; "
        f"{args.rounds} alternating rounds.",
        "",
        f"| mode | variant | decode tokens/s (range) | ms/token | prefill (s) | {memory} "
        "| bytes/token | floor fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lo, hi = s["tokens_per_s_range"]
        name = "TernaryLinear i2, act=int8" if s["variant"] == "ternary" else "dense bf16"
        lines.append(f"| {s['mode']} | {name} | {s['tokens_per_s']:.2f} ({lo:.2f}-{hi:.2f}) "
                     f"| {s['ms_per_token']:.2f} | {s['prefill_s']:.3f} "
                     f"| {_gib(s['peak_memory_bytes'])} | {_gib(s['bytes_per_token'])} "
                     f"| {100 * s['floor_fraction']:.0f}% |")
    by = {(s["mode"], s["variant"]): s for s in summaries}
    lines.append("")
    for mode in MODES:
        t, d = by.get((mode, "ternary")), by.get((mode, "dense"))
        if t and d:
            lines.append(f"* {mode}: ternary / dense bf16 tokens/s = "
                         f"**{t['tokens_per_s'] / d['tokens_per_s']:.2f}x**, prefill "
                         f"{d['prefill_s'] / t['prefill_s']:.2f}x faster, memory "
                         f"{d['peak_memory_bytes'] / t['peak_memory_bytes']:.2f}x smaller")
    bw = statistics.median(s["read_bandwidth"] for s in summaries)
    lines.append(f"* Read bandwidth measured in the same processes: {bw / 1e9:.1f} GB/s "
                 "(median); the floor fraction is bytes/token at that rate over the step time.")
    if not all(s["same_tokens"] for s in summaries):
        lines.append("* Note: a variant's greedy tokens differed between rounds.")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    p.add_argument("--mode", default="eager",
                   help="eager, compiled, or both comma-separated (default: eager)")
    p.add_argument("--shape", default="bitnet-2b", choices=sorted(SHAPES))
    p.add_argument("--layers", type=int, default=0,
                   help="number of decoder layers (default: the shape's own)")
    p.add_argument("--vocab", type=int, default=128256,
                   help="vocabulary size (default 128256, the real one; 32000 for a small head)")
    p.add_argument("--vs-dense", action="store_true",
                   help="also run the same model with dense bf16 weights")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (prefill)")
    p.add_argument("--prefills", type=int, default=3,
                   help="timed prefills per round (after an untimed one); their median counts")
    p.add_argument("--tokens", type=int, default=32, help="timed decode steps per round")
    p.add_argument("--warmup", type=int, default=4,
                   help="untimed decode steps first (compiled: compilation and graph capture)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (>= 1)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--head", default="bf16", choices=("bf16", "int8"),
                   help="the ternary variant's output head: bf16 or int8 (convert(head='int8'))")
    p.add_argument("--embedding", default="bf16", choices=("bf16", "int8"),
                   help="the ternary variant's input embedding: bf16 or int8")
    p.add_argument("--attention", default="decode-safe", choices=("decode-safe", "stock"),
                   help="attention of both variants: the one convert() gives a transformers "
                        "model (ternary_ops.hf.attention, default) or transformers' stock SDPA")
    p.add_argument("--fuse", default="on", choices=("on", "off"),
                   help="the ternary variant's q/k/v and gate/up as one layer each "
                        "(tops.fuse_projections, what convert() does; default on)")
    p.add_argument("--fold-norms", default="on", choices=("on", "off"),
                   help="the ternary variant's RMSNorms folded into the ternary layers they feed "
                        "(ternary_ops.fuse.fold_norms, what convert() does; default on)")
    p.add_argument("--huge-pages", default="on", choices=("on", "off"),
                   help="the ternary variant's packed weights in one buffer of 2 MiB pages "
                        "(tops.use_huge_pages, what convert() does; Linux CPU; default on)")
    p.add_argument("--cuda-graphs", default="step", choices=("step", "trees"),
                   help="compiled mode on cuda: the step captured in one CUDA graph by "
                        "ternary_ops.hf.cuda_graph_step (default), or the graphs of "
                        "mode='reduce-overhead' (cudagraph trees)")
    p.add_argument("--module-guards", default="off", choices=("on", "off"),
                   help="compiled mode: keep torch.compile's guards on the model's module state "
                        "(default off, as ternary_ops.hf.compile_kwargs gives: the model is not "
                        "changed after compiling)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernel", default=None, help="force a CPU kernel set (default: best)")
    p.add_argument("--markdown", default=None, help="write the results table to this file")
    p.add_argument("--json", default=None, help="write every run's raw results to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    modes = args.mode.split(",")
    for m in modes:
        if m not in MODES:
            p.error(f"--mode: expected eager, compiled or eager,compiled; got {m!r}")
    if args.rounds < 1 or args.tokens < 1 or args.prompt < 1 or args.prefills < 1:
        p.error("--rounds, --tokens, --prompt and --prefills must be >= 1")
    if args.layers < 0:
        p.error(f"--layers must be >= 0, got {args.layers}")
    return p, args, modes


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p, args, modes = parse_args(argv)
    if args.child:
        mode, variant = args.child.split(":")
        print(json.dumps(run_child(args, mode, variant)))
        return 0
    variants = ["ternary", "dense"] if args.vs_dense else ["ternary"]
    runs = {}
    for rnd in range(args.rounds):
        for mode in modes:
            for variant in variants:
                cmd = [sys.executable, os.path.abspath(__file__), *argv,
                       "--child", f"{mode}:{variant}"]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.stderr.write(out.stdout[-4000:] + out.stderr[-8000:])
                    return out.returncode
                r = json.loads(out.stdout.strip().splitlines()[-1])
                runs.setdefault((mode, variant), []).append(r)
                print(f"round {rnd + 1} {mode:8s} {variant:8s} {1 / r['median_step_s']:8.2f} "
                      f"tok/s  prefill {r['prefill_s']:.3f} s  peak "
                      f"{_gib(r['peak_memory_bytes'])}  bw {r['read_bandwidth'] / 1e9:.1f} GB/s "
                      f"(built in {r['build_s']:.1f} s)", flush=True)
    summaries = [summarize(runs[key]) for key in runs]
    text = markdown(args, summaries, argv)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summaries": summaries,
                       "runs": [r for key in runs for r in runs[key]]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
