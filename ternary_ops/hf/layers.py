"""The layers Hugging Face BitNet checkpoints map onto (see :mod:`ternary_ops.hf` for how):
:class:`RMSNorm`, :class:`BitNetLinear` and :func:`make_bitnet_linear`, which builds one from a
BitNet layer's tensors. No ``transformers`` import."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..formats import ROWS_PER_BYTE, pack_i2, packed_rows, unpack_i2, validate_weight
from ..fuse import llama_rms_norm
from ..nn import TernaryLinear

LINEAR_CLASSES = ("bitlinear", "autobitlinear")
WEIGHT_QUANT_EPS = 1e-5  # Hugging Face's WeightQuant: mean|W| clamped below at this


class RMSNorm(nn.Module):
    """RMSNorm with Hugging Face's arithmetic (``LlamaRMSNorm``): normalise in float32, cast
    back to the input dtype, then multiply by the weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return llama_rms_norm(x, self.weight, self.variance_epsilon)

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
            if x.dim() == 0 or x.shape[-1] != self.in_features:
                raise self._wrong_width(x)
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
    inv = 1.0 / w.abs().mean().clamp(min=WEIGHT_QUANT_EPS)
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
    ``weight_scale`` follows ``linear_class``'s convention (see :mod:`ternary_ops.hf`);
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
            out_features = weight.shape[0] * ROWS_PER_BYTE
        if weight.shape[0] != packed_rows(out_features):
            raise ValueError(f"{name}: packed weight for out_features={out_features} must have "
                             f"{packed_rows(out_features)} rows, got {list(weight.shape)}")
        if out_features % ROWS_PER_BYTE == 0:
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
