"""Greedy decoding with the KV cache, one token per step, timed per step (what ``generate``
does): shared by the examples in this folder."""
import time

import torch

from ternary_ops.hf import cache_kwargs, output_cache


def greedy_decode(model, ids, new_tokens):
    """Returns (new tokens [new_tokens], prefill seconds, list of per-step decode seconds)."""
    t0 = time.perf_counter()
    out = model(ids, use_cache=True)
    prefill = time.perf_counter() - t0
    cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
    tokens, steps = [token], []
    for _ in range(new_tokens - 1):
        t0 = time.perf_counter()
        out = model(token, use_cache=True, **cache_kwargs(model, cache))
        token = out.logits[:, -1:].argmax(-1)
        steps.append(time.perf_counter() - t0)
        tokens.append(token)
    return torch.cat(tokens, 1)[0], prefill, steps
