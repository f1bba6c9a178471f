"""Decode attention for converted ``transformers`` models: the SDPA backend of one-token queries.

On CUDA, PyTorch's cuDNN backend of ``scaled_dot_product_attention`` builds an execution plan for every
new combination of shapes and tensor addresses it sees, several milliseconds each on the host.
Eager decode with a growing KV cache (``DynamicCache``) gives it a new key length and new cache
tensors on every step and in every layer, so where PyTorch picks cuDNN for a one-token query
(e.g. torch 2.11 on Hopper) each layer pays a plan build per token: tens of milliseconds per
token, far more than the layer's own work. Prefill and CUDA-graph replays (static shapes) are
not affected.

On the CPU under ``torch.compile`` with a static cache, the fused CPU kernel attends over the
whole cache with a mask and costs about 1 ms per layer at a 600-slot cache (a 2B model's step
went from 34 to 60 ms); the math backend, which Inductor compiles into the step's own kernels,
does not.

:data:`ATTENTION_NAME` is ``transformers``' SDPA attention with the backend of one-token queries
chosen per device: on CUDA every backend but cuDNN (flash, memory-efficient or math, PyTorch's
usual choice among them); on the CPU while compiling, math. Everything else (prefill, eager CPU,
other devices) is unchanged. :func:`use_decode_attention` switches a model that uses ``"sdpa"`` to it;
``convert()`` and the checkpoint loaders of :mod:`ternary_ops.hf` do so for the models they
return. ``model.set_attn_implementation("sdpa")`` restores the stock function.
"""
from __future__ import annotations

import torch
from torch import nn

ATTENTION_NAME = "ternary_sdpa"

_registered = False


def decode_backends(query: torch.Tensor):
    """The SDPA backends for ``query``, or ``None`` for PyTorch's own choice."""
    from torch.nn.attention import SDPBackend

    if query.shape[-2] != 1:
        return None
    if query.device.type == "cuda":
        return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if query.device.type == "cpu" and torch.compiler.is_compiling():
        return [SDPBackend.MATH]
    return None


def decode_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask, **kwargs):
    """``transformers``' ``sdpa_attention_forward`` with :func:`decode_backends` (see the
    module docstring)."""
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    backends = decode_backends(query)
    if backends is not None:
        with sdpa_kernel(backends):
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Registers :data:`ATTENTION_NAME` (attention and mask functions) with ``transformers``."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, decode_sdpa)
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
