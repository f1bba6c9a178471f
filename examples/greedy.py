"""Greedy decoding through ``model.generate`` (its KV cache, one token per step) with the time of
every step: shared by the examples in this folder.

``generate`` owns the cache (a ``DynamicCache``), so no example passes one between forward
calls by hand, whatever the transformers version calls that argument. A streamer that only
reads the clock gives the step times: ``generate`` hands it the prompt, then each new token as
soon as it is chosen."""
import time

import torch
from transformers.generation.streamers import BaseStreamer


class StepClock(BaseStreamer):
    """Records the time at which generate() hands over the prompt and then each new token."""

    def __init__(self):
        self.stamps = []

    def put(self, value):
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


def greedy_decode(model, ids, new_tokens):
    """Greedy decoding of exactly ``new_tokens`` tokens after the prompt ``ids`` [1, T] (the end
    of sequence token is held back until then). Returns (new tokens [new_tokens], prefill
    seconds: prompt to first token, list of the per-step decode seconds: one per later token)."""
    if ids.shape[0] != 1:
        raise ValueError(f"greedy_decode takes one sequence, got a batch of {ids.shape[0]}")
    cfg = model.generation_config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else model.config.pad_token_id
    if pad is None:
        eos = cfg.eos_token_id
        pad = eos[0] if isinstance(eos, (list, tuple)) else eos
    clock = StepClock()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                         pad_token_id=pad, use_cache=True, streamer=clock)
    stamps = clock.stamps  # [prompt handed over, token 1, token 2, ...]
    steps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return out[0, ids.shape[1]:], stamps[1] - stamps[0], steps
