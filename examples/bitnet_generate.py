"""Load a BitNet b1.58 checkpoint with ternary-ops and generate text.

    python examples/bitnet_generate.py path/to/bitnet-b1.58-2B-4T --prompt "The capital of France is"
    python examples/bitnet_generate.py            # no folder: a small synthetic BitNet model

The folder is a Hugging Face BitNet checkpoint (config.json with a bitnet quantization_config,
safetensors weights, optionally a tokenizer), read offline. Its packed weights go into
ternary-ops layers as they are. Without a folder, a random BitNet model in the same format is
written to a temporary folder first (random weights: the tokens are noise, the speed is real).
Generation is greedy ``generate`` with the KV cache on one sequence (M = 1 row per linear layer
while decoding, int8 activations as BitNet's layers use them); the decode speed is the time of
each step, printed with its spread. ``--compare`` also runs transformers' own BitNet layers on
the same checkpoint, in rounds that alternate with ternary-ops, and reports whether the greedy
generations agree and the decode speed-up per round (with a warning when a figure is noisy).
"""
import argparse
import os
import sys
import tempfile
import time

import torch

import ternary_ops as tops
import ternary_ops.hf as tops_hf
from ternary_ops import bench
from greedy import greedy_decode  # examples/greedy.py

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def timed_generate(model, ids, new_tokens):
    """Returns (new tokens, prefill seconds, Timing of the decode steps in seconds)."""
    load = bench.other_load_probe()  # other processes' share of the CPUs meanwhile
    with torch.inference_mode():
        tokens, prefill, steps = greedy_decode(model, ids, new_tokens)
    return tokens, prefill, bench.summarize(steps, other_load=load())


def decode_text(prefill, steps):
    return (f"prefill {prefill:.3f} s; decode step {1e3 * steps.median:.2f} ms median (IQR "
            f"{1e3 * steps.q1:.2f}-{1e3 * steps.q3:.2f}, min {1e3 * steps.min:.2f}, "
            f"{steps.n} steps), {1 / steps.median:.1f} tokens/s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", help="BitNet checkpoint folder (default: synthetic)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=32, help="at least 2")
    p.add_argument("--format", choices=("i2", "i8"), default="i2")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="dtype of embeddings and norms (default: the config's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare", action="store_true",
                   help="also run transformers' BitNet layers and compare generations")
    p.add_argument("--rounds", type=int, default=3,
                   help="--compare: decode rounds alternating the two (default 3)")
    args = p.parse_args(argv)
    if args.max_new_tokens < 2:
        p.error("--max-new-tokens must be at least 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype] if args.dtype else None

    tmp = None
    folder = args.folder
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = tmp.name
        cfg = tops_hf.save_random_bitnet(folder, seed=0)
        print(f"no checkpoint given: wrote a random BitNet model ({cfg.num_hidden_layers} "
              f"layers, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}) to {folder}")
    t0 = time.perf_counter()
    model = tops_hf.from_pretrained_bitnet(folder, format=args.format, dtype=dtype)
    load_s = time.perf_counter() - t0
    layers = [m for m in model.modules() if isinstance(m, tops.TernaryLinear)]
    ternary_bytes = sum(m.weight_bytes() for m in layers)
    print(f"loaded in {load_s:.2f} s: {len(layers)} ternary layers ({format(args.format)}, "
          f"{ternary_bytes / 2**20:.1f} MiB), dtype {model.dtype}, CPU kernel "
          f"{tops.cpu_kernel()}, {torch.get_num_threads()} threads")

    tokenizer = None
    if os.path.exists(os.path.join(folder, "tokenizer.json")) or os.path.exists(
            os.path.join(folder, "tokenizer_config.json")):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    else:  # no tokenizer: a fixed prompt of token ids
        ids = torch.arange(3, 3 + 16).remainder(model.config.vocab_size).unsqueeze(0)
        print(f"no tokenizer in the folder: prompt is token ids {ids[0].tolist()}")

    tokens, prefill, steps = timed_generate(model, ids, args.max_new_tokens)
    text = tokenizer.decode(tokens, skip_special_tokens=True) if tokenizer else tokens.tolist()
    print(f"greedy generate(), {ids.shape[1]}-token prompt, 1 sequence (M = 1 while decoding): "
          f"{decode_text(prefill, steps)}")
    print(f"generated: {text}")
    warnings = bench.warning_lines("decode step", steps)

    if args.compare or args.folder is None:
        from transformers import AutoModelForCausalLM
        # transformers' BitNet layers wrap their quantization (and AutoBitLinear's unpacking) in
        # torch.compile; eager is the same arithmetic without the compile time
        with torch._dynamo.config.patch(disable=True):
            ref = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
            ref_tokens, ref_prefill, ref_steps = timed_generate(ref, ids, args.max_new_tokens)
            print(f"transformers BitLinear: {decode_text(ref_prefill, ref_steps)}")
            with torch.inference_mode():
                want = ref(ids).logits.float()
                got = model(ids).logits.float()
                cmp = bench.compare_rounds(
                    {"ternary-ops": lambda: greedy_decode(model, ids, args.max_new_tokens)[2],
                     "transformers": lambda: greedy_decode(ref, ids, args.max_new_tokens)[2]},
                    rounds=args.rounds)
        speedup = cmp.speedup("ternary-ops", over="transformers")
        print(f"decode speed-up of ternary-ops over transformers' BitLinear, {args.rounds} "
              f"rounds alternating the two (step time ratio per round): "
              f"{bench.format_ratio(speedup)}")
        warnings += bench.warning_lines("transformers decode step", ref_steps)
        warnings += bench.warning_lines("decode speed-up", speedup)
        rel = ((got - want).abs().max() / want.abs().max()).item()
        agree = int((ref_tokens == tokens).int().cumprod(0).sum())
        print(f"  prompt logits: max difference {rel:.1e} of the largest logit; greedy "
              f"generations agree on the first {agree}/{len(tokens)} tokens")
        if agree < len(tokens):
            print("  (same int8 activations and ternary codes; the layers' outputs differ in the "
                  "last bits (float32: ~2 ulp; in half precision transformers also quantizes in "
                  "that precision), and int8 activation rounding amplifies such differences "
                  "over many tokens of a random model, whose top logits are close)")
    bench.print_warnings(warnings)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
