"""Convert a transformers model's linear layers to ternary and compare it with the dense model.

    python examples/convert_compare.py                         # synthetic Llama-style model
    python examples/convert_compare.py --arch gpt2 --plot cmp.png
    python examples/convert_compare.py --model path/to/local/hf-model --dtype bfloat16

Prints a table: weight memory, prefill time, decode tokens/s (greedy, KV cache, median step), and agreement
with the dense model's outputs (top-1 next-token agreement, logits cosine similarity, greedy
generation match) for dense and a few ternary variants. ``--plot`` saves a bar chart
(needs matplotlib).

Post-training ternarization of a model trained in full precision loses most of its quality
(BitNet models are trained ternary); on the synthetic random model the agreement columns show
how far the outputs move, the speed and memory columns are what carries over to real models.
"""
import argparse
import copy
import statistics
import sys
import time

import torch

import ternary_ops as tops
from ternary_ops.bench import matplotlib_pyplot, noise_warnings, spread
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


def best_time(fn, repeat=2):
    """Best of ``repeat`` runs (the machine may be shared): (seconds, last result)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def decode(model, prompt, new_tokens):
    """Greedy decode with the KV cache, one token per step: (tokens, seconds per step)."""
    tokens, _, steps = greedy_decode(model, prompt, new_tokens)
    return tokens, steps


def measure(model, prompt, new_tokens, dense_logits=None, dense_tokens=None):
    with torch.inference_mode():
        prefill, out = best_time(lambda: model(prompt))
        logits = out.logits.float()
        decode(model, prompt[:1], 3)  # warm-up
        tokens, steps = decode(model, prompt[:1], new_tokens)
    row = {"prefill_ms": 1000 * prefill, "decode_tok_s": 1.0 / statistics.median(steps),
           "step": spread(steps),
           "linear_mib": linear_bytes(model) / 2**20, "model_mib": model_bytes(model) / 2**20}
    if dense_logits is None:
        row.update(top1=1.0, cosine=1.0, gen_match=1.0)
    else:
        row["top1"] = (logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item()
        row["cosine"] = torch.nn.functional.cosine_similarity(
            logits.flatten(1), dense_logits.flatten(1), dim=-1).mean().item()
        row["gen_match"] = (tokens == dense_tokens).float().mean().item()
    return row, logits, tokens


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="local transformers model folder (default: synthetic)")
    p.add_argument("--arch", choices=("llama", "qwen2", "gpt2"), default="llama",
                   help="synthetic model architecture")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--plot", help="save a bar chart to this file (needs matplotlib)")
    args = p.parse_args(argv)
    plt = matplotlib_pyplot(p) if args.plot else None  # fail before measuring
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

    rows = {}
    rows["dense"], ref_logits, ref_tokens = measure(dense, prompt, args.new_tokens)
    for fmt, act in VARIANTS:
        model = copy.deepcopy(dense)
        summary = tops.convert(model, format=fmt, act=act, progress=False)
        label = f"ternary {fmt} act={act}"
        rows[label], _, _ = measure(model, prompt, args.new_tokens, ref_logits, ref_tokens)
        print(f"  {label}: {summary}")
        del model

    header = (f"| {'model':24s} | linear MiB | model MiB | prefill ms | decode tok/s | "
              f"{'decode step: median (min, max, IQR)':40s} | speed-up | top-1 agree | logits cos "
              f"| gen match |")
    print("\n" + header + "\n|" + "---|" * 10)
    base = rows["dense"]["decode_tok_s"]
    for label, r in rows.items():
        print(f"| {label:24s} | {r['linear_mib']:10.1f} | {r['model_mib']:9.1f} "
              f"| {r['prefill_ms']:10.1f} | {r['decode_tok_s']:12.1f} | {r['step'].format():40s} "
              f"| {r['decode_tok_s'] / base:7.2f}x | {r['top1']:11.3f} | {r['cosine']:10.3f} "
              f"| {r['gen_match']:9.3f} |")
    print(f"\ndecode: batch 1, greedy with the KV cache, {args.new_tokens} steps per model, the "
          "models one after another (speed-up: ratio of median steps); prefill: best of two.")
    for line in noise_warnings({label: r["step"] for label, r in rows.items()}):
        print(line)

    if args.plot:
        labels = list(rows)
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        for ax, key, title in zip(axes, ("decode_tok_s", "linear_mib", "cosine"),
                                  ("decode tokens/s", "linear weights (MiB)",
                                   "logits cosine vs dense")):
            ax.bar(range(len(labels)), [rows[k][key] for k in labels],
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
