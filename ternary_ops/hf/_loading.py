"""What both checkpoint loaders share: the lazy ``transformers`` import, the folder check, the
model skeleton on the meta device and the final assignment of the tensors; and the two
keyword helpers for running a loaded model's decode loop (``cache_kwargs``,
``compile_kwargs``)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Dict, Optional, Union

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


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for passing a KV cache to ``model(...)``: the keyword is ``cache`` in
    the transformers versions that take it and ``past_key_values`` in earlier ones."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}



def compile_kwargs(device: Union[str, torch.device], module_guards: bool = False) -> dict:
    """Keyword arguments for ``torch.compile`` of a model's decode step, which are also the
    fields of ``transformers.CompileConfig``: ``fullgraph=True``; on CUDA, CUDA graphs (what
    ``mode="reduce-overhead"`` turns on); and, unless ``module_guards``, no guards on the state
    of the model's ``nn.Module`` objects (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``).

    Every call of a compiled function first checks its guards, and a model of a few hundred
    modules has thousands of guards on their attributes, parameters and buffers. At batch 1
    that check is a large share of a short step (benchmarks/results/e2e.md measures it).

    Without them the compiled step assumes that the model does not change after compiling:
    replacing a layer, a parameter or a buffer, changing an attribute such as ``act``, or
    switching ``train()``/``eval()`` would not compile again, and the old code would run.
    Call ``torch.compiler.reset()`` after such a change, or pass ``module_guards=True``.

    Returns a new dict on every call: ``torch.compile`` takes ``guard_filter_fn`` out of the
    ``options`` it is given, so one dict serves one ``torch.compile`` call.
    """
    device = torch.device(device).type
    options = {}
    if device == "cuda":
        options["triton.cudagraphs"] = True
    if not module_guards:
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        if skip is None:
            warnings.warn(f"compile_kwargs: torch {torch.__version__} cannot skip module guards "
                          "(torch.compiler.skip_guard_on_all_nn_modules_unsafe); keeping them",
                          UserWarning, stacklevel=2)
        else:
            options["guard_filter_fn"] = skip
    return {"fullgraph": True, "mode": None, "options": options or None}
