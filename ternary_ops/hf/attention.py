"""Decode attention for converted ``transformers`` models: the SDPA backend of one-token queries.

On CUDA, PyTorch's cuDNN backend of ``scaled_dot_product_attention`` builds an execution plan
(milliseconds of host time) for every new combination of shapes and tensor addresses it sees.
Eager decode with a growing KV cache (``DynamicCache``) gives it a new key length and new cache
tensors on every step and in every layer, so where PyTorch picks cuDNN for a one-token query
(e.g. torch 2.11 on Hopper) each layer pays a plan build per token, far more than the layer's
own work. Prefill is not affected.

A compiled step over a static cache (``torch.compile`` with ``StaticCache``) is the opposite
case on CUDA. Its key length is fixed, so cuDNN builds one plan and the CUDA graph replays it.
But ``transformers`` passes a mask there, so it expands the grouped K/V heads to every query
head (``repeat_kv``) and the masked one-token query runs the memory-efficient kernel, several
times slower than cuDNN on the grouped heads (``enable_gqa=True``).

On the CPU under ``torch.compile`` with a static cache, the fused CPU kernel attends over the
whole cache with a mask and costs more than the rest of the layer; the math backend, which
Inductor compiles into the step's own kernels, does not.

:data:`ATTENTION_NAME` is ``transformers``' SDPA attention with the backend of one-token queries
chosen per device and mode:

* CUDA, compiling, a fixed key length, float16 or bfloat16: cuDNN on the grouped heads (math if
  cuDNN declines the call);
* CUDA otherwise: every backend but cuDNN (flash, memory-efficient or math, PyTorch's usual
  choice among them);
* CPU while compiling: math.

Everything else (prefill, eager CPU, other devices) is unchanged. :func:`use_decode_attention`
switches a model that uses ``"sdpa"`` to it; ``convert()`` and the checkpoint loaders of
:mod:`ternary_ops.hf` do so for the models they return.
``model.set_attn_implementation("sdpa")`` restores the stock function.
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


def _static_cuda_decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        kwargs) -> bool:
    """Whether a call is a one-token query over a fixed-length cache in a compiled CUDA step, with
    nothing that needs ``transformers``' own handling (position bias, softcap, attention
    weights, dropout)."""
    return (query.device.type == "cuda" and query.shape[-2] == 1
            and torch.compiler.is_compiling()
            and isinstance(key.shape[-2], int)  # a static cache, not a growing symbolic length
            and query.dtype in (torch.float16, torch.bfloat16)
            and query.dim() == key.dim() == value.dim() == 4
            and key.shape[-1] == value.shape[-1] == query.shape[-1]
            and query.shape[1] % key.shape[1] == 0
            and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions", False)
            and not kwargs.get("dropout", 0.0))


def _grouped_decode(query, key, value, attention_mask, scaling):
    """Attention of one-token queries on the grouped K/V heads: cuDNN, math if cuDNN declines."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]):
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def decode_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                value: torch.Tensor, attention_mask, **kwargs):
    """``transformers``' ``sdpa_attention_forward`` with the decode backends of the module
    docstring."""
    from torch.nn.attention import sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if _static_cuda_decode(query, key, value, kwargs):
        return _grouped_decode(query, key, value, attention_mask, kwargs.get("scaling"))
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
