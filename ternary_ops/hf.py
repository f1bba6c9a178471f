"""Hugging Face ``transformers`` integration: BitNet checkpoints and converted models.

    import ternary_ops.hf as tops_hf

    # a BitNet b1.58 checkpoint folder (config.json + safetensors), offline
    model = tops_hf.from_pretrained_bitnet("path/to/bitnet-b1.58-2B-4T")
    # ...or a BitNet model transformers already loaded: its BitLinear layers are replaced in place
    tops_hf.from_pretrained_bitnet(hf_model)

    # any transformers model: ternarize with tops.convert, then save and load it
    tops.convert(model)
    tops_hf.save_pretrained(model, "out/")
    model = tops_hf.load_pretrained("out/")

``transformers`` is an optional dependency (``pip install ternary-ops[hf]``); this module
imports it lazily, so ``import ternary_ops`` never needs it.

How Hugging Face's BitNet layers map onto :class:`BitNetLinear` (a :class:`TernaryLinear`):

* Packed weights (``uint8 [out/4, in]``, code ``w + 1``, row ``j + i*out/4`` in bits ``2i``)
  are the i2 format as is: with ``format="i2"`` they are validated and used without a copy.
* ``linear_class="bitlinear"`` computes ``y = dot / (act_scale * weight_scale)``: the stored
  ``weight_scale`` is ``1 / mean|W|``, so our multiplicative scale is its reciprocal. The
  result equals Hugging Face's up to float rounding of that reciprocal (a few ulp); the
  integer part (quantized activations times ternary codes) is identical.
* ``linear_class="autobitlinear"`` computes ``y = (dequant(q) @ W.T + bias) * weight_scale``:
  the scale multiplies and, unlike ``nn.Linear``, it also scales the bias, so our bias is
  ``bias * weight_scale``. Weights may be stored packed or as dense ternary values. In
  ``quantization_mode="online"`` the dense weights are quantized once at load time with the
  same absmean rule Hugging Face applies on every call (``round(W / mean|W|)``, clamped).
* ``use_rms_norm=True``: the RMSNorm Hugging Face applies to the layer's input before
  quantizing is kept as ``BitNetLinear.rms_norm`` (same parameters, same arithmetic).
* Activations: Hugging Face quantizes per token with ``127 / max|x|.clamp(1e-5)``, round half
  to even, clamp to [-128, 127] -- our ``act="int8"`` rule. In float32 the int8 activations are
  identical. In bfloat16/float16 ``BitLinear`` computes that scale and the product ``x * scale``
  in the half type (and rounds its dot products to it), while we always quantize in float32,
  so half-precision results differ from Hugging Face's by half-precision rounding (ours are the
  more accurate; the comparison tests run in float32).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Dict, Optional, Union

import torch
from torch import nn

from .convert import dense_weight
from .formats import pack_i2, packed_rows, unpack_i2, validate_weight
from .io import METADATA_KEY, load as _load_tensors, save as _save
from .nn import TernaryLinear

HF_METADATA_KEY = "ternary_ops.hf"
HF_FORMAT_VERSION = 1
CHECKPOINT_NAME = "model.safetensors"
LINEAR_CLASSES = ("bitlinear", "autobitlinear")


def _require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("ternary_ops.hf needs the 'transformers' package: "
                          "pip install 'ternary-ops[hf]'") from e
    return transformers


# ---- layers ---------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm with Hugging Face's arithmetic (``LlamaRMSNorm``): normalise in float32, cast
    back to the input dtype, then multiply by the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class BitNetLinear(TernaryLinear):
    """:class:`TernaryLinear` with the optional input RMSNorm of Hugging Face's BitNet layers.

    ``rms_norm`` (``None`` unless ``use_rms_norm``) normalises the input before the ternary op;
    everything else (buffers, formats, ops, ``tops.save``) is :class:`TernaryLinear`'s.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 format: str = "i2", act: str = "int8", granularity: str = "tensor",
                 use_rms_norm: bool = False, rms_norm_eps: float = 1e-6, device=None,
                 dtype=None):
        super().__init__(in_features, out_features, bias=bias, format=format, act=act,
                         granularity=granularity, device=device, dtype=dtype)
        self.rms_norm = (RMSNorm(in_features, rms_norm_eps, device=device, dtype=dtype)
                         if use_rms_norm else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms_norm is not None:
            x = self.rms_norm(x)
        return super().forward(x)


def _scalar_or_rows(scale: torch.Tensor, n: int, where: str) -> torch.Tensor:
    scale = scale.detach().to(torch.float32)
    if scale.numel() == 1:
        return scale.reshape(())
    if scale.shape == (n,):
        return scale
    raise ValueError(f"{where}: weight_scale must hold 1 or {n} values, got shape "
                     f"{list(scale.shape)}")


def _absmean_codes(weight: torch.Tensor):
    """Hugging Face's ``WeightQuant`` rule: ``T = round(W * (1 / mean|W|.clamp(1e-5)))``,
    clamped to [-1, 1]; returns ``(T int8, 1 / that factor)``."""
    w = weight.detach().float()
    inv = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * inv).round().clamp(-1, 1).to(torch.int8), 1.0 / inv


def _dense_ternary_codes(weight: torch.Tensor, where: str) -> torch.Tensor:
    w = weight.detach()
    codes = w.round().clamp(-1, 1)
    if not bool((codes == w).all()):
        raise ValueError(f"{where}: expected a packed uint8 weight or dense ternary values "
                         f"(-1, 0, 1); got {w.dtype} values outside that set")
    return codes.to(torch.int8)


def make_bitnet_linear(name: str, weight: torch.Tensor, weight_scale: Optional[torch.Tensor],
                       bias: Optional[torch.Tensor], linear_class: str = "bitlinear",
                       online: bool = False, out_features: Optional[int] = None,
                       rms_norm_weight: Optional[torch.Tensor] = None,
                       rms_norm_eps: float = 1e-6, format: str = "i2", act: str = "int8",
                       dtype: Optional[torch.dtype] = None) -> BitNetLinear:
    """Builds a :class:`BitNetLinear` from one Hugging Face BitNet layer's tensors.

    ``weight``: packed ``uint8 [ceil(out/4), in]`` (``out_features`` required), or dense
    ``[out, in]`` (ternary values when ``online=False``, full precision when ``online=True``).
    ``weight_scale`` follows ``linear_class``'s convention (see the module docstring);
    ``dtype`` is the dtype of the bias and RMSNorm weight (default: theirs).
    """
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"{name}: linear_class must be one of {LINEAR_CLASSES}, got "
                         f"{linear_class!r}")
    if weight.dim() != 2:
        raise ValueError(f"{name}: weight must be 2-D, got shape {list(weight.shape)}")
    packed = codes = None
    if weight.dtype == torch.uint8:
        if out_features is None:
            out_features = weight.shape[0] * 4
        if weight.shape[0] != packed_rows(out_features):
            raise ValueError(f"{name}: packed weight for out_features={out_features} must have "
                             f"{packed_rows(out_features)} rows, got {list(weight.shape)}")
        if out_features % 4 == 0:
            validate_weight(weight, "i2", out_features)
            packed = weight
        else:  # other packers leave padding rows as code 0; ours must hold the zero code
            codes = unpack_i2(weight, out_features)
            validate_weight(codes, "i8")
    elif online:
        codes, scale = _absmean_codes(weight)
    else:
        codes = _dense_ternary_codes(weight, name)
    n = out_features if packed is not None else codes.shape[0]
    k = weight.shape[1]
    if online and weight.dtype != torch.uint8:
        s = scale.reshape(())
    else:
        if weight_scale is None:
            raise ValueError(f"{name}: weight_scale is missing")
        s = _scalar_or_rows(weight_scale, n, name)
        if linear_class == "bitlinear":
            s = 1.0 / s  # BitLinear divides by its stored scale
    if bias is not None:
        bias = bias.detach()
        if bias.shape != (n,):
            raise ValueError(f"{name}: bias must have shape [{n}], got {list(bias.shape)}")
        if linear_class == "autobitlinear" and not online:
            bias = (bias.float() * s).to(bias.dtype)  # AutoBitLinear scales the bias too
        if dtype is not None:
            bias = bias.to(dtype)
    layer = BitNetLinear(k, n, bias=bias is not None, format=format, act=act,
                         granularity="tensor" if s.dim() == 0 else "channel",
                         use_rms_norm=rms_norm_weight is not None, rms_norm_eps=rms_norm_eps,
                         device="meta")
    if format == "i2":
        layer.weight = packed if packed is not None else pack_i2(codes)
    else:
        layer.weight = codes if codes is not None else unpack_i2(packed, n)
    device = layer.weight.device
    layer.weight_scale = s.to(device)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(device), requires_grad=False)
    if rms_norm_weight is not None:
        w = rms_norm_weight.detach().to(device)
        layer.rms_norm.weight = nn.Parameter(w if dtype is None else w.to(dtype),
                                             requires_grad=False)
    return layer


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
        model.set_submodule(name, layer)
    return len(names)


# ---- checkpoints ----------------------------------------------------------------------------

def _check_folder(path: str) -> None:
    # Checked here: transformers would take a missing folder for a hub repo id.
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such checkpoint folder (loading is local only)")


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


def _read_safetensors(files) -> Dict[str, torch.Tensor]:
    from safetensors import safe_open

    tensors = {}
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def _model_skeleton(config):
    """The model for ``config`` with parameters on the meta device (buffers real, so
    non-persistent ones such as rotary frequencies are computed as usual)."""
    transformers = _require_transformers()
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


def _finish_load(model: nn.Module, tensors: Dict[str, torch.Tensor], where: str,
                 keep_dtype=(), dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Assigns ``tensors`` into ``model`` (casting floats to ``dtype`` unless their key is in
    ``keep_dtype``; shared tensors stay shared), ties weights, and checks nothing is left on
    the meta device."""
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
    return model.eval()


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
                           device: Optional[Union[str, torch.device]] = None) -> nn.Module:
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

    Which layers are ternary follows the config: for ``quantization_mode="offline"`` every
    linear layer with a ``weight_scale`` in the checkpoint; for ``"online"`` every linear
    layer except ``modules_to_not_convert`` and the output embedding.
    """
    if isinstance(path_or_model, nn.Module):
        count = patch_bitnet(path_or_model, format=format, act=act)
        if count == 0:
            raise ValueError("from_pretrained_bitnet: the model has no BitLinear/AutoBitLinear "
                             "layers; for a dense model use ternary_ops.convert")
        return path_or_model
    transformers = _require_transformers()
    path = os.fspath(path_or_model)
    _check_folder(path)
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
    tensors = _read_safetensors(_checkpoint_files(path))
    model = _model_skeleton(config)
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
        model.set_submodule(name, layer)
    model = _finish_load(model, tensors, path, dtype=dtype)
    return model if device is None else model.to(device)


# ---- save / load of converted models --------------------------------------------------------

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


def _read_metadata(file: str) -> dict:
    from safetensors import safe_open

    with safe_open(file, framework="pt", device="cpu") as f:
        return dict(f.metadata() or {})


def load_pretrained(save_directory: Union[str, os.PathLike],
                    dtype: Optional[torch.dtype] = None,
                    device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """Loads a folder written by :func:`save_pretrained`: builds the model from its config
    (parameters on the meta device, so no dense weights are ever allocated), puts a ternary
    layer wherever the file records one, and assigns the saved tensors. Offline.

    ``dtype`` casts the non-ternary tensors (default: as saved).
    """
    transformers = _require_transformers()
    path = os.fspath(save_directory)
    _check_folder(path)
    file = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path}: {CHECKPOINT_NAME} not found")
    meta = _read_metadata(file)
    if METADATA_KEY not in meta:
        raise ValueError(f"{file}: not written by ternary_ops (no '{METADATA_KEY}' metadata); "
                         "for a Hugging Face BitNet checkpoint use from_pretrained_bitnet")
    layers = json.loads(meta[METADATA_KEY]).get("layers", {})
    try:
        norms = json.loads(meta.get(HF_METADATA_KEY, "{}")).get("rms_norm", {})
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: corrupt '{HF_METADATA_KEY}' metadata ({e})") from None
    tensors = _load_tensors(file)  # validates every recorded ternary layer
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    model = _model_skeleton(config)
    keep = set()
    for prefix, spec in layers.items():
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
        kwargs = dict(bias=spec.get("bias", False), format=spec["format"], act=spec["act"],
                      device="meta")
        if prefix in norms:
            layer = BitNetLinear(spec["in_features"], spec["out_features"], use_rms_norm=True,
                                 rms_norm_eps=norms[prefix]["rms_norm_eps"], **kwargs)
        else:
            layer = TernaryLinear(spec["in_features"], spec["out_features"], **kwargs)
        model.set_submodule(prefix, layer)
        keep.add(f"{prefix}.weight_scale" if prefix else "weight_scale")
    model = _finish_load(model, tensors, file, keep_dtype=keep, dtype=dtype)
    return model if device is None else model.to(device)


# ---- synthetic checkpoints ------------------------------------------------------------------

def save_random_bitnet(save_directory: Union[str, os.PathLike], config=None,
                       linear_class: str = "bitlinear", seed: int = 0,
                       dtype: torch.dtype = torch.bfloat16):
    """Writes a random BitNet b1.58 checkpoint in Hugging Face's format, packed with
    transformers' own packer: for examples and benchmarks without a download.

    ``config``: a ``transformers.BitNetConfig`` (default: a small 4-layer model). Linear
    weights are ``round(W / mean|W|)`` of a random init, packed ``uint8 [out/4, in]``, with
    ``weight_scale`` in ``linear_class``'s convention. Returns the config.
    """
    transformers = _require_transformers()
    from safetensors.torch import save_file
    from transformers.integrations.bitnet import pack_weights

    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {LINEAR_CLASSES}, got {linear_class!r}")
    if config is None:
        config = transformers.BitNetConfig(
            vocab_size=1024, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512,
            bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.05)
    config = copy.deepcopy(config)
    config.quantization_config = {"quant_method": "bitnet", "linear_class": linear_class,
                                  "quantization_mode": "offline"}
    config.dtype = dtype
    torch.manual_seed(seed)
    dense = transformers.BitNetForCausalLM(config)
    state = {}
    for name, p in dense.named_parameters():
        module_name = name.rpartition(".")[0]
        module = dense.get_submodule(module_name)
        if (isinstance(module, nn.Linear) and name.endswith(".weight")
                and module is not dense.get_output_embeddings()):
            w = p.detach().float()
            mean = w.abs().mean().clamp(min=1e-5)
            codes = (w / mean).round().clamp(-1, 1).to(torch.int8)
            state[name] = pack_weights(codes)
            stored = 1.0 / mean if linear_class == "bitlinear" else mean
            state[module_name + ".weight_scale"] = stored.reshape(1).to(dtype)
        else:
            state[name] = p.detach().to(dtype).contiguous()
    path = os.fspath(save_directory)
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    save_file(state, os.path.join(path, CHECKPOINT_NAME), metadata={"format": "pt"})
    return config
