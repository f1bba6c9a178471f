"""What both checkpoint loaders share: the lazy ``transformers`` import, the folder check, the
model skeleton on the meta device and the final assignment of the tensors; and the two
keyword helpers for running a loaded model's decode loop (``cache_kwargs``,
``compile_kwargs``)."""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional

import torch
from torch import nn

CHECKPOINT_NAME = "model.safetensors"


def require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ternary_ops.hf needs the 'transformers' package: "
                          "pip install 'ternary-ops[hf]'") from e
    return transformers


def check_folder(path: str) -> None:
    # Checked here: transformers would take a missing folder for a hub repo id.
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint folder (loading is local only)")


def model_skeleton(config):
    """The model for ``config`` with parameters on the meta device (buffers real, so
    non-persistent ones such as rotary frequencies are computed as usual)."""
    transformers = require_transformers()
    try:
        from accelerate import init_empty_weights
        ctx = init_empty_weights(include_buffers=False)
    except ImportError:  # without accelerate the skeleton is simply initialised on the CPU
        ctx = contextlib.nullcontext()
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    with ctx:
        if cls is not None:
            return cls(config)
        return transformers.AutoModelForCausalLM.from_config(config)


def finish_load(model: nn.Module, tensors: Dict[str, torch.Tensor], where: str,
                keep_dtype=(), dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Assigns ``tensors`` into ``model`` (casting floats to ``dtype`` unless their key is in
    ``keep_dtype``; shared tensors stay shared), ties weights, checks nothing is left on the
    meta device, and switches SDPA attention to the decode-safe one (:mod:`.attention`)."""
    cast = {}
    state = {}
    for key, t in tensors.items():
        if dtype is not None and t.is_floating_point() and key not in keep_dtype:
            if id(t) not in cast:
                cast[id(t)] = t.to(dtype)
            t = cast[id(t)]
        state[key] = t
    result = model.load_state_dict(state, strict=False, assign=True)
    unexpected = [k for k in result.unexpected_keys if not k.endswith("inv_freq")]
    if unexpected:
        raise ValueError(f"{where}: the checkpoint has tensors the model does not: "
                         f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.device.type == "meta"]
    if left:
        raise ValueError(f"{where}: the checkpoint lacks tensors the model needs: "
                         f"{left[:8]}{' ...' if len(left) > 8 else ''}")
    from .attention import use_decode_attention
    use_decode_attention(model)
    return model.eval()
