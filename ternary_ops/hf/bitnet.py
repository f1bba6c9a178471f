"""Hugging Face BitNet b1.58 models: checkpoint folders (:func:`from_pretrained_bitnet`),
models ``transformers`` already loaded (:func:`patch_bitnet`), and random checkpoints in the
same format (:func:`save_random_bitnet`). How the layers map: see :mod:`ternary_ops.hf`."""
from __future__ import annotations

import copy
import json
import os
from typing import Optional, Union

import torch
from torch import nn

from ..convert import check_head_and_embedding, quantize_head_and_embedding
from ..fuse import fold_norms as fold_norms_into_layers
from ..fuse import fuse_projections
from ..io import read_tensors
from ..memory import use_huge_pages
from ._loading import (CHECKPOINT_NAME, check_folder, finish_load, model_skeleton,
                       require_transformers)
from .attention import use_decode_attention
from .layers import LINEAR_CLASSES, WEIGHT_QUANT_EPS, BitNetLinear, make_bitnet_linear


def _hf_bitnet_classes():
    try:
        from transformers.integrations.bitnet import AutoBitLinear, BitLinear
    except ImportError:  # older transformers: BitLinear only
        try:
            from transformers.integrations.bitnet import BitLinear
        except ImportError:
            return ()
        return (BitLinear,)
    return (BitLinear, AutoBitLinear)


def _layer_from_hf_module(name: str, module: nn.Module, format: str, act: str) -> BitNetLinear:
    online = bool(getattr(module, "online_quant", False))
    auto = isinstance(module, nn.Linear)  # AutoBitLinear subclasses nn.Linear, BitLinear does not
    norm = getattr(module, "rms_norm", None)
    weight = module.weight
    if weight.device.type == "meta":
        raise ValueError(f"{name}: weights are on the meta device; load the model first")
    return make_bitnet_linear(
        name, weight, getattr(module, "weight_scale", None), module.bias,
        linear_class="autobitlinear" if auto else "bitlinear", online=online,
        out_features=module.out_features,
        rms_norm_weight=None if norm is None else norm.weight,
        rms_norm_eps=1e-6 if norm is None else float(getattr(norm, "variance_epsilon", 1e-6)),
        format=format, act=act)


def patch_bitnet(model: nn.Module, format: str = "i2", act: str = "int8") -> int:
    """Replaces every Hugging Face ``BitLinear``/``AutoBitLinear`` in ``model`` with a
    :class:`BitNetLinear`, in place. Returns how many layers were replaced.

    With ``format="i2"`` the packed weights of ``BitLinear`` are reused without a copy.
    """
    classes = _hf_bitnet_classes()
    names = [n for n, m in model.named_modules() if classes and isinstance(m, classes)]
    for name in names:
        module = model.get_submodule(name)
        with torch.no_grad():
            layer = _layer_from_hf_module(name, module, format, act)
        layer.layer_name = name
        model.set_submodule(name, layer)
    return len(names)


def _checkpoint_files(path: str):
    index = os.path.join(path, CHECKPOINT_NAME + ".index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        return [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
    single = os.path.join(path, CHECKPOINT_NAME)
    if os.path.isfile(single):
        return [single]
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no safetensors checkpoint ({CHECKPOINT_NAME}, its "
                                "index, or any *.safetensors); other formats are not supported")
    return [os.path.join(path, f) for f in files]


def _quant_config(config) -> dict:
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return {}
    return dict(qc if isinstance(qc, dict) else qc.to_dict())


def _config_dtype(config, dtype):
    if dtype is not None:
        return dtype
    # transformers 5 names it ``dtype`` (reading ``torch_dtype`` warns); 4.x ``torch_dtype``
    d = getattr(config, "dtype", None) or vars(config).get("torch_dtype")
    if isinstance(d, str):
        d = getattr(torch, d, None)
    return d if isinstance(d, torch.dtype) else torch.float32


def _should_convert(name: str, patterns) -> bool:
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # older transformers: plain prefix / suffix match
        return not any(name == p or name.startswith(p + ".") or name.endswith(p)
                       for p in (patterns or ()))
    return should_convert_module(name, patterns)


def from_pretrained_bitnet(path_or_model, format: str = "i2", act: str = "int8",
                           dtype: Optional[torch.dtype] = None,
                           device: Optional[Union[str, torch.device]] = None,
                           head: str = "dense", embedding: str = "dense",
                           fuse: bool = True, fold_norms: bool = True) -> nn.Module:
    """Loads a Hugging Face BitNet b1.58 model with :class:`BitNetLinear` layers.

    Args:
        path_or_model: a local checkpoint folder (``config.json`` with a bitnet
            ``quantization_config`` plus ``model.safetensors`` or sharded safetensors), read
            offline; or a model ``transformers`` already loaded, whose ``BitLinear`` /
            ``AutoBitLinear`` layers are replaced in place.
        format: ``"i2"`` keeps the checkpoint's packed bytes (1/8 of bf16); ``"i8"`` unpacks
            to int8 (more memory, no decode).
        act: ``"int8"`` quantizes activations per token exactly like Hugging Face's layers;
            ``"none"`` keeps them in floating point (not what the checkpoint was trained for).
        dtype: dtype of everything that is not ternary (embeddings, norms, biases). Default:
            the config's dtype, else float32. Folder loads only.
        device: where to put the model (default CPU). Folder loads only.
        head, embedding: ``"int8"`` keeps the output head / input embedding at 8 bits
            (:func:`ternary_ops.convert.quantize_head_and_embedding`); ``"dense"`` (default)
            leaves them as the checkpoint has them.
        fuse: fuse q/k/v and gate/up into one ternary layer each
            (:func:`ternary_ops.fuse_projections`; layers with their own input RMSNorm are
            left apart). Default True.
        fold_norms: fold the decoder layers' RMSNorms into the act="int8" ternary layers they
            feed (:func:`ternary_ops.fuse.fold_norms`). Default True.

    Which layers are ternary follows the config: for ``quantization_mode="offline"`` every
    linear layer with a ``weight_scale`` in the checkpoint; for ``"online"`` every linear
    layer except ``modules_to_not_convert`` and the output embedding.
    """
    check_head_and_embedding(head, embedding, "from_pretrained_bitnet")
    if isinstance(path_or_model, nn.Module):
        count = patch_bitnet(path_or_model, format=format, act=act)
        if count == 0:
            raise ValueError("from_pretrained_bitnet: the model has no BitLinear/AutoBitLinear "
                             "layers; for a dense model use ternary_ops.convert")
        use_decode_attention(path_or_model)
        if fuse:
            fuse_projections(path_or_model)
        if fold_norms:
            fold_norms_into_layers(path_or_model)
        quantize_head_and_embedding(path_or_model, head, embedding, act)
        return path_or_model  # its packed buffers are used as they are: no use_huge_pages copy
    transformers = require_transformers()
    path = os.fspath(path_or_model)
    check_folder(path)
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    qc = _quant_config(config)
    if qc.get("quant_method") != "bitnet":
        raise ValueError(f"{path}: config.json has no bitnet quantization_config (found "
                         f"{qc.get('quant_method')!r}); for a dense model use "
                         "ternary_ops.convert, for one saved by ternary_ops.hf use load_pretrained")
    linear_class = qc.get("linear_class", "bitlinear")
    online = qc.get("quantization_mode", "offline") == "online"
    use_norm, eps = bool(qc.get("use_rms_norm", False)), qc.get("rms_norm_eps") or 1e-6
    dtype = _config_dtype(config, dtype)
    tensors = read_tensors(_checkpoint_files(path))
    model = model_skeleton(config)
    skip = list(qc.get("modules_to_not_convert") or [])
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        if online:
            if module is out_emb or not _should_convert(name, skip):
                continue
        elif name + ".weight_scale" not in tensors:
            continue
        take = lambda key: tensors.pop(f"{name}.{key}", None)  # noqa: E731
        weight = take("weight")
        if weight is None:
            raise ValueError(f"{path}: tensor '{name}.weight' is missing")
        norm_w = take("rms_norm.weight") if use_norm else None
        if use_norm and norm_w is None:
            raise ValueError(f"{path}: use_rms_norm is set but '{name}.rms_norm.weight' is "
                             "missing")
        with torch.no_grad():
            layer = make_bitnet_linear(
                f"{path}: {name}", weight, take("weight_scale"), take("bias"),
                linear_class=linear_class, online=online, out_features=module.out_features,
                rms_norm_weight=norm_w, rms_norm_eps=eps, format=format, act=act, dtype=dtype)
        if (layer.in_features, layer.out_features) != (module.in_features, module.out_features):
            raise ValueError(f"{path}: {name} is {layer.in_features} -> {layer.out_features} in "
                             f"the checkpoint but {module.in_features} -> "
                             f"{module.out_features} in the config")
        layer.layer_name = name
        model.set_submodule(name, layer)
    model = finish_load(model, tensors, path, dtype=dtype)
    if fuse:
        fuse_projections(model)
    if fold_norms:
        fold_norms_into_layers(model)
    quantize_head_and_embedding(model, head, embedding, act)
    model = model if device is None else model.to(device)
    use_huge_pages(model)
    return model


def save_random_bitnet(save_directory: Union[str, os.PathLike], config=None,
                       linear_class: str = "bitlinear", seed: int = 0,
                       dtype: torch.dtype = torch.bfloat16, quantization_mode: str = "offline",
                       use_rms_norm: bool = False, rms_norm_eps: float = 1e-6,
                       packed: bool = True):
    """Writes a random BitNet b1.58 checkpoint in Hugging Face's format, packed with
    transformers' own packer: for examples, benchmarks and tests without a download.

    ``config``: a ``transformers.BitNetConfig`` (default: a small 4-layer model); its
    ``quantization_config`` is made of ``linear_class``, ``quantization_mode``,
    ``use_rms_norm`` and ``rms_norm_eps``. Linear weights (all but the output embedding) are
    ``round(W / mean|W|)`` of a random init, packed ``uint8 [out/4, in]`` (dense ternary values
    with ``packed=False``), with ``weight_scale`` in ``linear_class``'s convention; with
    ``quantization_mode="online"`` they are stored unquantized, without a scale. Linear biases
    (``config.attention_bias``) are random ``0.1 * N(0, 1)``; ``use_rms_norm`` adds each linear
    layer's input RMSNorm weight, random ``1 + 0.2 * N(0, 1)``. Every tensor but the packed
    weights is stored in ``dtype``. Returns the config.
    """
    transformers = require_transformers()
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {LINEAR_CLASSES}, got {linear_class!r}")
    if quantization_mode not in ("offline", "online"):
        raise ValueError(f"quantization_mode must be 'offline' or 'online', got "
                         f"{quantization_mode!r}")
    if config is None:
        config = transformers.BitNetConfig(
            vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.05)
    config = copy.deepcopy(config)
    config.quantization_config = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": quantization_mode,
                                  "use_rms_norm": use_rms_norm, "rms_norm_eps": rms_norm_eps}
    config.dtype = dtype
    torch.manual_seed(seed)
    dense = transformers.BitNetForCausalLM(config)
    out_emb = dense.get_output_embeddings()
    state = {}
    for name, module in dense.named_modules():
        if not isinstance(module, nn.Linear) or module is out_emb:
            for key, p in module.named_parameters(recurse=False):
                state[f"{name}.{key}" if name else key] = p.detach().to(dtype).contiguous()
            continue
        if module.bias is not None:
            state[name + ".bias"] = (torch.randn(module.out_features) * 0.1).to(dtype)
        if use_rms_norm:
            state[name + ".rms_norm.weight"] = (1 + 0.2 * torch.randn(module.in_features)).to(dtype)
        w = module.weight.detach().float()
        if quantization_mode == "online":
            state[name + ".weight"] = w.to(dtype).contiguous()
            continue
        mean = w.abs().mean().clamp(min=WEIGHT_QUANT_EPS)
        codes = (w / mean).round().clamp(-1, 1)
        state[name + ".weight"] = pack_weights(codes.to(torch.int8)) if packed else codes.to(dtype)
        stored = 1.0 / mean if linear_class == "bitlinear" else mean
        state[name + ".weight_scale"] = stored.reshape(1).to(dtype)
    path = os.fspath(save_directory)
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_file(state, os.path.join(path, CHECKPOINT_NAME), metadata={"format": "pt"})
    return config
