"""Convert a transformers model's linear layers to ternary and compare it with the dense model.

    python examples/convert_compare.py                         # synthetic Llama-style model
    python examples/convert_compare.py --arch gpt2 --plot cmp.png
    python examples/convert_compare.py --model path/to/local/hf-model --dtype bfloat16

Prints a table: weight memory; prefill time (one forward of a batch of 2 prompts); decode time
per step and tokens/s (batch 1, greedy ``generate`` with the KV cache, M = 1 row per linear
layer); the decode speed-up over the dense model; and agreement with the dense model's outputs
(top-1 next-token agreement, logits cosine similarity, greedy generation match) for dense and a
few ternary variants (format and act mode). Each variant is timed in rounds that alternate it
with the dense model (dense, variant, variant, dense, ...), the speed-up is taken per round, and
every figure comes with its spread and a warning when it is not to be trusted. The weights are
hot: the same model runs every step, so they stay in cache as far as they fit. ``--plot``
saves a bar chart (needs matplotlib: the ``bench`` extra).

Post-training ternarization of a model trained in full precision loses most of its quality
(BitNet models are trained ternary); on the synthetic random model the agreement columns show
how far the outputs move, the speed and memory columns are what carries over to real models.
"""
import argparse
import copy
import sys
import time

import torch

import ternary_ops as tops
from ternary_ops import bench
from ternary_ops.convert import dense_weight
from greedy import greedy_decode  # examples/greedy.py

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
VARIANTS = (("i2", "int8"), ("i8", "int8"), ("i2", "none"))


def synthetic(arch, dtype):
    import transformers
    torch.manual_seed(0)
    common = dict(vocab_size=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=768, n_layer=6, n_head=12, n_positions=512,
                                      **common)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
               "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[arch]
        cfg = cls[0](hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                     num_attention_heads=16, num_key_value_heads=4,
                     max_position_embeddings=512, **common)
        model = cls[1](cfg)
    return model.to(dtype).eval()


def linear_bytes(model):
    total = 0
    for m in model.modules():
        if isinstance(m, tops.TernaryLinear):
            total += m.weight_bytes()
        else:
            dense = dense_weight(m)
            if dense is not None:
                total += dense[0].numel() * dense[0].element_size()
    return total


def model_bytes(model):
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def quality(model, prompt, new_tokens, dense_logits=None, dense_tokens=None):
    """Logits on the prompt batch, greedy tokens of its first row, and their agreement with
    the dense model's."""
    with torch.inference_mode():
        logits = model(prompt).logits.float()
        tokens, _, _ = greedy_decode(model, prompt[:1], new_tokens)
    if dense_logits is None:
        return {"top1": 1.0, "cosine": 1.0, "gen_match": 1.0}, logits, tokens
    return {
        "top1": (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item(),
        "cosine": torch.nn.functional.cosine_similarity(
            logits.flatten(1), dense_logits.flatten(1), dim=-1).mean().item(),
        "gen_match": (tokens == dense_tokens).float().mean().item(),
    }, logits, tokens


def timed_rounds(models, prompt, new_tokens, rounds):
    """Prefill and decode of each model in ``models`` (label -> model), in alternating rounds:
    (prefill Comparison, decode-step Comparison)."""
    def prefill(model):
        def run():
            out = []
            for _ in range(2):
                t0 = time.perf_counter()
                model(prompt)
                out.append(time.perf_counter() - t0)
            return out
        return run

    def decode(model):
        return lambda: greedy_decode(model, prompt[:1], new_tokens)[2]

    with torch.inference_mode():
        for model in models.values():  # warm-up
            model(prompt)
            greedy_decode(model, prompt[:1], 3)
        pre = bench.compare_rounds({k: prefill(m) for k, m in models.items()}, rounds)
        dec = bench.compare_rounds({k: decode(m) for k, m in models.items()}, rounds)
    return pre, dec


def cell(t, scale=1e3):
    """"median [q1-q3]" of a Timing in seconds, shown in ms."""
    return f"{t.median * scale:.2f} [{t.q1 * scale:.2f}-{t.q3 * scale:.2f}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local transformers model folder (default: synthetic)")
    p.add_argument("--arch", choices=("llama", "qwen2", "gpt2"), default="llama",
                   help="synthetic model architecture")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5,
                   help="timing rounds alternating each variant with dense (default 5)")
    p.add_argument("--plot", help="save a bar chart to this file (needs matplotlib: the bench "
                                  "extra)")
    args = p.parse_args(argv)
    if args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (the first token ends the prefill)")
    if args.plot:
        bench.require_matplotlib("--plot")  # before the run, not after it
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    if args.model:
        from transformers import AutoModelForCausalLM
        dense = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                     local_files_only=True).eval()
        name = args.model
    else:
        dense = synthetic(args.arch, dtype)
        name = f"synthetic {args.arch}"
    vocab = dense.config.vocab_size
    prompt = torch.randint(3, vocab, (2, args.prompt_len),
                           generator=torch.Generator().manual_seed(1))
    print(f"{name}: {sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M parameters, "
          f"{args.dtype}, CPU kernel {tops.cpu_kernel()}, {torch.get_num_threads()} threads")

    rows, warnings = {}, []
    rows["dense"], ref_logits, ref_tokens = quality(dense, prompt, args.new_tokens)
    rows["dense"]["linear_mib"] = linear_bytes(dense) / 2**20
    rows["dense"]["model_mib"] = model_bytes(dense) / 2**20
    dense_pre, dense_dec = [], []
    for fmt, act in VARIANTS:
        model = copy.deepcopy(dense)
        summary = tops.convert(model, format=fmt, act=act, progress=False)
        label = f"ternary {fmt} act={act}"
        print(f"  {label}: {summary}")
        row, _, _ = quality(model, prompt, args.new_tokens, ref_logits, ref_tokens)
        row.update(linear_mib=linear_bytes(model) / 2**20, model_mib=model_bytes(model) / 2**20)
        pre, dec = timed_rounds({"dense": dense, label: model}, prompt, args.new_tokens,
                                args.rounds)
        row.update(prefill=pre.timings[label], step=dec.timings[label],
                   speedup=dec.speedup(label, over="dense"))
        warnings += bench.warning_lines(f"{label} prefill", row["prefill"])
        warnings += bench.warning_lines(f"{label} decode step", row["step"])
        warnings += bench.warning_lines(f"{label} decode speed-up", row["speedup"])
        dense_pre.append(pre.timings["dense"])
        dense_dec.append(dec.timings["dense"])
        rows[label] = row
        del model
    # dense: every round it ran, next to each variant in turn
    pooled = lambda ts: bench.summarize(  # noqa: E731
        [x for t in ts for x in t.samples],
        other_load=max((t.other_load for t in ts if t.other_load is not None), default=None))
    rows["dense"].update(prefill=pooled(dense_pre), step=pooled(dense_dec), speedup=None)
    warnings = (bench.warning_lines("dense prefill", rows["dense"]["prefill"])
                + bench.warning_lines("dense decode step", rows["dense"]["step"]) + warnings)

    print(f"\nprefill: one forward of {prompt.shape[0]} prompts x {args.prompt_len} tokens; "
          f"decode: greedy generate() of {args.new_tokens} tokens on 1 sequence (M = 1), KV "
          f"cache, time of each step; weights hot (the same model every step).")
    print(f"Times in ms: median [interquartile range]. Each variant ran in {args.rounds} rounds "
          f"alternating with dense; decode speed-up = dense step time / variant step time per "
          f"round: median [min-max over the rounds].")
    header = (f"| {'model':24s} | linear MiB | model MiB | prefill ms | decode ms/step | "
              f"decode tok/s | decode speed-up | top-1 agree | logits cos | gen match |")
    print("\n" + header + "\n|" + "---|" * 10)
    for label, r in rows.items():
        sp = r["speedup"]
        sp = "1 (baseline)" if sp is None else f"{sp.median:.2f}x [{sp.min:.2f}-{sp.max:.2f}]"
        print(f"| {label:24s} | {r['linear_mib']:10.1f} | {r['model_mib']:9.1f} "
              f"| {cell(r['prefill'])} | {cell(r['step'])} | {1 / r['step'].median:12.1f} "
              f"| {sp} | {r['top1']:11.3f} | {r['cosine']:10.3f} | {r['gen_match']:9.3f} |")
    bench.print_warnings(warnings)

    if args.plot:
        plt = bench.require_matplotlib("--plot")
        labels = list(rows)
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        values = {"decode_tok_s": lambda r: 1 / r["step"].median,
                  "linear_mib": lambda r: r["linear_mib"], "cosine": lambda r: r["cosine"]}
        for ax, key, title in zip(axes, ("decode_tok_s", "linear_mib", "cosine"),
                                  ("decode tokens/s (median step)", "linear weights (MiB)",
                                   "logits cosine vs dense")):
            ax.bar(range(len(labels)), [values[key](rows[k]) for k in labels],
                   color=["grey"] + ["tab:blue"] * (len(labels) - 1))
            ax.set_xticks(range(len(labels)), [k.replace("ternary ", "") for k in labels],
                          rotation=20)
            ax.set_title(title)
        fig.suptitle(f"{name}: dense vs ternary-ops ({tops.cpu_kernel()} kernels)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
