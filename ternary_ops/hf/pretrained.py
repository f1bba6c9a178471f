"""Models with ternary layers (from :func:`ternary_ops.convert` or
:func:`~ternary_ops.hf.from_pretrained_bitnet`) saved as a folder ``transformers`` can build
them from: :func:`save_pretrained` and :func:`load_pretrained`."""
from __future__ import annotations

import copy
import json
import os
from typing import Optional, Union

import torch
from torch import nn

from ..convert import dense_weight, untie_config
from ..io import (METADATA_KEY, build_layer, fold_recorded_norms, fuse_into,
                  load as _load_tensors, read_metadata, save as _save)
from ..memory import use_huge_pages
from ..nn import Int8Linear, TernaryLinear
from ._loading import (CHECKPOINT_NAME, check_folder, finish_load, model_skeleton,
                       require_transformers)
from .layers import BitNetLinear

HF_METADATA_KEY = "ternary_ops.hf"
HF_FORMAT_VERSION = 1


def save_pretrained(model: nn.Module, save_directory: Union[str, os.PathLike]) -> None:
    """Saves a model with ternary layers (from :func:`ternary_ops.convert` or
    :func:`from_pretrained_bitnet`) to a folder: ``config.json`` (plus
    ``generation_config.json`` when the model has one) and ``model.safetensors`` with packed
    weights and the ternary layer metadata. Reload with :func:`load_pretrained`.

    A BitNet ``quantization_config`` is dropped from the saved config: the file holds our
    layers (multiplicative scales), which Hugging Face's BitNet loader would misread.
    """
    path = os.fspath(save_directory)
    os.makedirs(path, exist_ok=True)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise ValueError("save_pretrained: the model has no transformers config; use "
                         "ternary_ops.save for plain modules")
    config = copy.deepcopy(config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, (TernaryLinear, Int8Linear)):
        untie_config(config)  # loading must not tie the ternary head to the embedding
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]
    config.save_pretrained(path)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(path)
    norms = {name: {"rms_norm_eps": m.rms_norm.variance_epsilon}
             for name, m in model.named_modules()
             if isinstance(m, BitNetLinear) and m.rms_norm is not None}
    info = {"version": HF_FORMAT_VERSION, "rms_norm": norms}
    _save(model, os.path.join(path, CHECKPOINT_NAME),
          metadata={HF_METADATA_KEY: json.dumps(info, sort_keys=True), "format": "pt"})


def load_pretrained(save_directory: Union[str, os.PathLike],
                    dtype: Optional[torch.dtype] = None,
                    device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Loads a folder written by :func:`save_pretrained`: builds the model from its config
    (parameters on the meta device, so no dense weights are ever allocated), puts a ternary
    layer wherever the file records one, and assigns the saved tensors. Offline.

    ``dtype`` casts the non-ternary tensors (default: as saved).
    """
    transformers = require_transformers()
    path = os.fspath(save_directory)
    check_folder(path)
    file = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: {CHECKPOINT_NAME} not found")
    meta = read_metadata(file)
    if METADATA_KEY not in meta:
        raise ValueError(f"{file}: not written by ternary_ops (no '{METADATA_KEY}' metadata); "
                         "for a Hugging Face BitNet checkpoint use from_pretrained_bitnet")
    tensors = _load_tensors(file)  # validates the metadata and every recorded ternary layer
    layers = json.loads(meta[METADATA_KEY]).get("layers", {})
    try:
        info = json.loads(meta.get(HF_METADATA_KEY, "{}"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: corrupt '{HF_METADATA_KEY}' metadata ({e})") from None
    norms = info.get("rms_norm", {}) if isinstance(info, dict) else None
    if not (isinstance(norms, dict) and all(
            isinstance(v, dict) and isinstance(v.get("rms_norm_eps"), (int, float))
            for v in norms.values())):
        raise ValueError(f"{file}: malformed '{HF_METADATA_KEY}' metadata: expected "
                         "{\"rms_norm\": {layer: {\"rms_norm_eps\": number}}}")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    model = model_skeleton(config)
    keep = set()
    for prefix, spec in layers.items():
        if "fuses" in spec:  # its members are layers of the skeleton
            fuse_into(model, prefix, spec, f"{file}: layer '{prefix}'", device="meta",
                      dtype=dtype)
            keep.add(f"{prefix}.weight_scale")
            continue
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            raise ValueError(f"{file}: ternary layer '{prefix}' does not exist in the model "
                             f"built from {path}/config.json") from None
        dense = dense_weight(module)
        shape = (spec["in_features"], spec["out_features"])
        if dense is not None and tuple(dense[0].shape[::-1]) != shape:
            raise ValueError(f"{file}: layer '{prefix}' is {shape[0]} -> {shape[1]} in the file "
                             f"but {dense[0].shape[1]} -> {dense[0].shape[0]} in the model built "
                             f"from {path}/config.json")
        if prefix in norms:
            layer = BitNetLinear(spec["in_features"], spec["out_features"], use_rms_norm=True,
                                 rms_norm_eps=norms[prefix]["rms_norm_eps"],
                                 bias=spec.get("bias", False), format=spec["format"],
                                 act=spec["act"], device="meta")
        else:
            layer = build_layer(spec, device="meta", dtype=dtype)
        layer.layer_name = prefix
        model.set_submodule(prefix, layer)
        keep.add(f"{prefix}.weight_scale" if prefix else "weight_scale")
    fold_recorded_norms(model, layers, file)
    model = finish_load(model, tensors, file, keep_dtype=keep, dtype=dtype)
    model = model if device is None else model.to(device)
    use_huge_pages(model)
    return model
