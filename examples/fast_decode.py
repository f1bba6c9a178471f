"""The fastest batch-1 decode recipe (README, "Fast decode"), end to end.

    python examples/fast_decode.py                          # a random BitNet-shaped model, CPU
    python examples/fast_decode.py --device cuda --layers 30
    python examples/fast_decode.py path/to/bitnet-b1.58-2B-4T   # a BitNet checkpoint folder
    python examples/fast_decode.py --eager                  # the same without torch.compile

The recipe: ternary layers (i2, act="int8"), the output head and the input embedding at 8 bits
(``head="int8"``, ``embedding="int8"``; tied, as in BitNet-2B-4T, they share one int8 table), a
static KV cache and a compiled decode step with ``ternary_ops.hf.compile_kwargs`` (fullgraph, no
guards on the model's module state). On CUDA the step is a custom greedy loop whose compiled step
is captured in one CUDA graph (``ternary_ops.hf.cuda_graph_step``); on the CPU ``generate``
runs ``torch.compile(model.forward, **compile_kwargs("cpu"))`` with one thread per core. Prints
the greedy tokens/s (median of the steps, with their spread) and checks that the compiled model
decodes the same tokens as the eager one.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ternary_ops as tops  # noqa: E402
import ternary_ops.hf as tops_hf  # noqa: E402
from ternary_ops.bench import format_timing, summarize  # noqa: E402

from greedy import greedy_decode  # noqa: E402


def random_bitnet(layers: int, vocab: int, seed: int = 0):
    """A BitNet-b1.58-2B-shaped transformers model (``layers`` layers) with random weights,
    converted: ternary linear layers, int8 head and embedding."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BitNetConfig(
        vocab_size=vocab, hidden_size=2560, intermediate_size=6912, num_hidden_layers=layers,
        num_attention_heads=20, num_key_value_heads=5, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = transformers.BitNetForCausalLM(config).to(torch.bfloat16).eval()
    print(tops.convert(model, head="int8", embedding="int8"))
    return model


def one_graph_decode(model, ids, new_tokens):
    """Greedy decoding on CUDA with the compiled step replayed as one CUDA graph (README, "Your
    own decode loop"). Returns (new tokens [new_tokens], list of the per-step decode seconds)."""
    from transformers import StaticCache

    prompt_len = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + new_tokens)
    kw = tops_hf.cache_kwargs(model, cache)
    with torch.inference_mode():
        token = model(input_ids=ids, use_cache=True, logits_to_keep=1,
                      **kw).logits[:, -1:].argmax(-1)  # prefill

        def decode(tok, pos):
            logits = model(input_ids=tok, position_ids=pos[None], cache_position=pos,
                           use_cache=True, **kw).logits
            return logits[:, -1:].argmax(-1)

        # Compiles and captures (untimed); the warm-up leaves the cache as it was.
        step = tops_hf.cuda_graph_step(
            torch.compile(decode, **tops_hf.compile_kwargs("cuda", cuda_graphs=False)),
            token, torch.tensor([prompt_len], device=ids.device),
            state=tops_hf.cache_tensors(cache))
        tokens, times = [token], []
        for i in range(new_tokens - 1):
            pos = torch.tensor([prompt_len + i], device=ids.device)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            token = step(token, pos).clone()  # the graph reuses its output buffer
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            tokens.append(token)
    return torch.cat(tokens, 1)[0], times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", help="a BitNet b1.58 checkpoint folder (default: a "
                                             "random model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=4, help="layers of the random model")
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary of the random model")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    p.add_argument("--tokens", type=int, default=32, help="tokens to generate")
    p.add_argument("--eager", action="store_true", help="skip torch.compile")
    args = p.parse_args(argv)

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    if args.folder:
        model = tops_hf.from_pretrained_bitnet(args.folder, dtype=torch.bfloat16,
                                               head="int8", embedding="int8")
    else:
        model = random_bitnet(args.layers, args.vocab)
    model = model.to(args.device)
    ids = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]], device=args.device)

    # The eager model first: its tokens are what the compiled one must reproduce.
    want, _, eager_steps = greedy_decode(model, ids, args.tokens)
    # The model is not changed after this point, which is what compile_kwargs' missing module
    # guards assume.
    if args.eager:
        got, _, steps = greedy_decode(model, ids, args.tokens)
    elif args.device == "cuda":
        got, steps = one_graph_decode(model, ids, args.tokens)
    else:
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, **tops_hf.compile_kwargs(args.device))
        greedy_decode(model, ids, args.tokens)  # compiles (same cache length), untimed
        got, _, steps = greedy_decode(model, ids, args.tokens)
    if not torch.equal(got, want):
        print("note: the compiled model's tokens differ from the eager model's (compiled "
              "norms and attention round differently)")
    for name, s in (("eager", eager_steps), ("this run", steps)):
        t = summarize(s[2:])
        print(f"{name:9s} decode: {1 / t.median:7.1f} tokens/s  step {format_timing(t, 'ms')}")


if __name__ == "__main__":
    main()
