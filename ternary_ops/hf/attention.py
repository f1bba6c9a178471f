"""Decode attention for converted ``transformers`` models on CUDA.

PyTorch's cuDNN backend of ``scaled_dot_product_attention`` builds an execution plan for every
new combination of shapes and tensor addresses it sees, several milliseconds each on the host.
Eager decode with a growing KV cache (``DynamicCache``) gives it a new key length and new cache
tensors on every step and in every layer, so where PyTorch picks cuDNN for a one-token query
(e.g. torch 2.11 on Hopper) each layer pays a plan build per token: tens of milliseconds per
token, far more than the layer's own work. Prefill and CUDA-graph replays (static shapes) are
not affected.

:data:`ATTENTION_NAME` is ``transformers``' SDPA attention with one change: a one-token query on
CUDA runs with the cuDNN backend excluded (flash, memory-efficient or math, PyTorch's usual
choice among them). :func:`use_decode_attention` switches a model that uses ``"sdpa"`` to it;
``convert()`` and the checkpoint loaders of :mod:`ternary_ops.hf` do so for the models they
return. ``model.set_attn_implementation("sdpa")`` restores the stock function.
"""
from __future__ import annotations

import torch
from torch import nn

ATTENTION_NAME = "ternary_sdpa"

_registered = False


def _backends():
    from torch.nn.attention import SDPBackend
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def decode_safe_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                     value: torch.Tensor, attention_mask, **kwargs):
    """``transformers``' ``sdpa_attention_forward``, with cuDNN excluded for one-token queries
    on CUDA (see the module docstring)."""
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type == "cuda" and query.shape[-2] == 1:
        with sdpa_kernel(_backends()):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Registers :data:`ATTENTION_NAME` (attention and mask functions) with ``transformers``."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, decode_safe_sdpa)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    _registered = True


def use_decode_attention(model: nn.Module) -> bool:
    """Switches a ``transformers`` model whose attention is ``"sdpa"`` to :data:`ATTENTION_NAME`,
    in place. Returns whether it did (other models and attention choices are left as they are).
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not hasattr(model, "set_attn_implementation"):
        return False
    register()
    model.set_attn_implementation(ATTENTION_NAME)
    return config._attn_implementation == ATTENTION_NAME
