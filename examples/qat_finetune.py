"""Quantization-aware training of a small Llama on the CPU, then packing it.

    python examples/qat_finetune.py                  # 300 steps, about a minute on 2 cores
    python examples/qat_finetune.py --steps 50 --plot loss.png

A 2-layer Llama (transformers) learns a synthetic next-token task (each sequence counts up
from a random start, modulo the vocabulary) with its linear layers ternary from the first
step: ``tops.prepare_qat`` makes them QATLinear (latent float weights, the packed op's forward,
straight-through gradients). The loss falls; ``tops.convert`` then packs the trained layers,
and the packed model's logits equal the QAT model's bit for bit (float32, act="int8").
"""
import argparse

import torch

import ternary_ops as tops


def tiny_llama(vocab: int, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).float()


def batch(vocab: int, size: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Sequences that count up from a random start, modulo the vocabulary."""
    start = torch.randint(0, vocab, (size, 1), generator=gen)
    return (start + torch.arange(length)) % vocab


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--plot", default=None, help="save the loss curve here (needs matplotlib)")
    args = p.parse_args(argv)

    model = tiny_llama(args.vocab)
    names = tops.prepare_qat(model)  # every linear layer but lm_head
    print(f"prepare_qat: {len(names)} layers train ternary (QATLinear)")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for step in range(args.steps):
        ids = batch(args.vocab, 16, 24, gen)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    print(f"loss: {first:.3f} (first 10 steps) -> {last:.3f} (last 10)")

    model.eval()
    ids = batch(args.vocab, 4, 24, gen)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    # Packs each QATLinear with its own format, act and granularity. Folded norms would
    # round differently from the QAT model's separate RMSNorms, so this comparison keeps
    # them apart (fusing q/k/v is exact either way).
    summary = tops.convert(model, fold_norms=False)
    print(summary)
    with torch.no_grad():
        got = model(input_ids=ids).logits
    same = torch.equal(got, want)
    print("packed logits equal the QAT model's bit for bit:", same)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(losses)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("QAT of a 2-layer Llama (ternary linear layers), CPU")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"loss curve: {args.plot}")
    return 0 if same and last < first else 1


if __name__ == "__main__":
    raise SystemExit(main())
