"""Quantization-aware training of ternary layers: :func:`prepare_qat` and :class:`QATLinear`.

A :class:`QATLinear` keeps a latent float weight that the optimizer updates. Its forward is the
packed layer's: the latent weight ternarized by :func:`ternary_ops.quantize` (absmean, per
tensor or per output row), then the ternary op itself on those codes (``linear_i8``: per-row
int8 activations for act="int8", the same rounding), so after training :func:`ternary_ops.convert`
packs each layer into a :class:`~ternary_ops.TernaryLinear` whose outputs are bit-identical
(act="int8"; act="none" up to the kernels' float rounding). Gradients use the straight-through
estimator, as BitNet training does: the backward pass is that of a dense linear layer on the
dequantized weight ``s * T`` and activations, and the latent weight receives the gradient that
``s * T`` would.
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Union

import torch
from torch import nn

from .formats import GRANULARITIES, check_format, quantize
from .nn import TernaryLinear
from .reference import ACT_MODES, quantize_activations

__all__ = ["QATLinear", "prepare_qat"]


class _TernaryLinearSTE(torch.autograd.Function):
    """Forward: the ternary op on the codes of the latent weight. Backward: a dense linear
    layer's gradients at the dequantized weight and activations (straight-through)."""

    @staticmethod
    def forward(ctx, x, weight, bias, act, granularity):
        codes, scale = quantize(weight, granularity)
        scale = scale.to(weight.device)
        y = torch.ops.ternary.linear_i8(x, codes, scale, bias, act)
        ctx.save_for_backward(x, codes, scale)
        ctx.act, ctx.has_bias = act, bias is not None
        ctx.weight_dtype = weight.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        x, codes, scale = ctx.saved_tensors
        w = codes.float() * (scale[:, None] if scale.dim() else scale)  # s * T, float32
        g = grad.reshape(-1, grad.shape[-1]).float()
        if ctx.act == "int8":  # the activations the forward multiplied: q / inv per row
            q, inv = quantize_activations(x)
            xq = (q / inv).reshape(-1, x.shape[-1])
        else:
            xq = x.reshape(-1, x.shape[-1]).float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ w).reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g.t() @ xq).to(ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


class QATLinear(nn.Linear):
    """An ``nn.Linear`` trained ternary: ``weight`` is the latent float weight, the forward runs
    the ternary op on its absmean codes (see the module docstring). ``format`` (``"i2"`` or
    ``"i8"``), ``act`` and ``granularity`` are what :func:`ternary_ops.convert` packs it into
    afterwards, whatever format ``convert`` is asked for."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 format: str = "i2", act: str = "int8", granularity: str = "tensor",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.format = check_format(format)
        if act not in ACT_MODES:
            raise ValueError(f"QATLinear: act must be 'int8' or 'none', got {act!r}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"QATLinear: granularity must be 'tensor' or 'channel', got "
                             f"{granularity!r}")
        self.act, self.granularity = act, granularity

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "i2", act: str = "int8",
                    granularity: str = "tensor") -> "QATLinear":
        """A QAT layer that trains ``linear``'s own weight and bias (the same parameters)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    format=format, act=act, granularity=granularity, device="meta")
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"QATLinear (in_features={self.in_features}, out_features="
                             f"{self.out_features}): x must have shape [..., {self.in_features}]"
                             f", got {list(x.shape)}")
        return _TernaryLinearSTE.apply(x, self.weight, self.bias, self.act, self.granularity)

    def to_ternary(self) -> TernaryLinear:
        """The packed layer of the current latent weight (what ``convert`` puts in its place)."""
        with torch.no_grad():
            return TernaryLinear.from_dense(self.weight, self.bias, format=self.format,
                                            act=self.act, granularity=self.granularity)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, format={self.format}, act={self.act}, "
                f"granularity={self.granularity}")


def prepare_qat(model: nn.Module, format: str = "i2", act: str = "int8",
                granularity: str = "tensor",
                exclude: Optional[Union[Iterable[str], str]] = None,
                filter: Optional[Callable[[str, nn.Linear], bool]] = None) -> List[str]:
    """Replaces the ``nn.Linear`` layers of ``model`` with :class:`QATLinear`, in place, for
    quantization-aware training; returns their qualified names. The layers keep their weight
    and bias parameters (an optimizer made before or after works on the same tensors).
    ``exclude`` and ``filter`` choose layers as in :func:`ternary_ops.convert` (by default the
    ``lm_head``-like output layers stay dense). After training, ``convert(model)`` packs every
    ``QATLinear`` into a :class:`~ternary_ops.TernaryLinear` with the layer's own format, act
    and granularity."""
    from .convert import DEFAULT_EXCLUDE, _excluded

    check_format(format)
    if act not in ACT_MODES:
        raise ValueError(f"prepare_qat: act must be 'int8' or 'none', got {act!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"prepare_qat: granularity must be 'tensor' or 'channel', got "
                         f"{granularity!r}")
    if isinstance(exclude, str):
        exclude = (exclude,)
    patterns = tuple(DEFAULT_EXCLUDE if exclude is None else exclude)
    names = [name for name, m in model.named_modules()
             if type(m) is nn.Linear and name and not _excluded(name, patterns)
             and (filter is None or filter(name, m))]
    for name in names:
        model.set_submodule(name, QATLinear.from_linear(model.get_submodule(name), format=format,
                                                        act=act, granularity=granularity))
    return names
