"""Reference semantics of the ternary ops in plain torch (docs/DESIGN.md, "Op semantics").

Ground truth for every kernel's tests, and the implementation used on devices that have no
native kernel. Runs on any device torch supports.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .formats import (ACT_EPS, ACT_QMAX, F32_MIN_NORMAL, NORM_AMAX_MIN, NORM_QMAX, Q8_WEIGHT_MAX,
                      unpack_i2)

ACT_MODES = ("int8", "none")


def quantize_activations(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row int8 quantization for ``act="int8"``.

    ``inv = 127 / max|x_row|.clamp(min=1e-5)`` in float32, ``q = round_half_even(x * inv)``
    clamped to [-128, 127]. Returns ``(q as float32 [..., K], inv float32 [..., 1])``.
    """
    xf = x.float()
    if xf.shape[-1] == 0:
        return xf, torch.full((*xf.shape[:-1], 1), ACT_QMAX / ACT_EPS, device=x.device)
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS)
    # A true float32 division: `127.0 / tensor` would compute reciprocal(tensor) * 127, which
    # rounds twice and can differ from the kernels' 127 / amax in the last bit.
    inv = torch.full_like(amax, ACT_QMAX).div_(amax)
    q = torch.round(xf * inv).clamp_(-128, 127)
    return q, inv


def _integer_dot(q: torch.Tensor, codes: torch.Tensor, wmax: int) -> torch.Tensor:
    # float32 holds every integer up to 2^24 exactly: |dot| <= 128 * wmax * K. Past that, float64
    # (on the CPU for devices without it).
    k = q.shape[-1]
    if 128 * wmax * k < (1 << 24):
        return (q.float() @ codes.float().T)
    if q.device.type == "mps":
        return _integer_dot(q.cpu(), codes.cpu(), wmax).to(q.device)
    return (q.double() @ codes.double().T).float()


def linear_codes(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                 bias: Optional[torch.Tensor], act: str, wmax: int = 1) -> torch.Tensor:
    """``y = s * (a @ T.T) (+ bias)`` from integer weights ``T`` (int8 ``[N, K]``, ``|T| <=
    wmax``: 1 for ternary codes)."""
    if act not in ACT_MODES:
        raise ValueError(f"act must be 'int8' or 'none', got {act!r}")
    if act == "int8":
        q, inv = quantize_activations(x)
        return _finish_int8(q, inv, codes, scale, bias, wmax, x.dtype)
    y = (x.float() @ codes.float().T) * scale.float().reshape(-1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def _finish_int8(q, inv, codes, scale, bias, wmax, dtype):
    y = _integer_dot(q, codes, wmax) / inv * scale.float().reshape(-1)
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


def linear_i8(x, weight, scale, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_i8``."""
    return linear_codes(x, weight, scale, bias, act)


def linear_i2(x, weight, scale, out_features, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_i2``."""
    return linear_codes(x, unpack_i2(weight, out_features), scale, bias, act)


def linear_q8(x, weight, scale, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_q8`` (int8 weights in [-127, 127])."""
    return linear_codes(x, weight, scale, bias, act, wmax=Q8_WEIGHT_MAX)


# ---- an input RMSNorm folded into act="int8" ----------------------------------------------

def rms_norm_factor(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``sqrt(mean(x_row^2) + eps)`` per row as the ``rms_norm_linear`` ops compute it, float32
    ``[..., 1]``: exact integers first, so every backend gets the same bits.

    ``a = max(max|x_row|, 1e-30)``, ``p = round_half_even(x * (32767 / a))`` (integers, ``|p|
    <= 32767``), ``ss = sum p^2`` (exact, int64), ``t = float(ss) / K * (a / 32767) * (a /
    32767)`` left to right in float32 with true divisions, ``t = 0`` below float32's smallest
    normal number, then ``sqrt(t + float32(eps))`` (float32 add, an ``eps`` below that normal
    number counting as 0, a correctly rounded square root). Rows holding NaN or +-Inf give any
    value (their output row is NaN whatever it is). ``K`` must be at least 1.
    """
    xf = x.float()
    a = xf.abs().amax(dim=-1, keepdim=True).clamp(min=NORM_AMAX_MIN)
    u = torch.full_like(a, NORM_QMAX).div_(a)
    p = torch.round(torch.where(torch.isfinite(a), xf * u, 0.0)).to(torch.int64)
    ss = (p * p).sum(dim=-1, keepdim=True)
    t = ss.float().div_(torch.full_like(a, float(xf.shape[-1])))
    d = a.div(torch.full_like(a, NORM_QMAX))
    t = t.mul_(d).mul_(d)
    t = torch.where(t < F32_MIN_NORMAL, torch.zeros_like(t), t)
    eps32 = torch.tensor(eps, dtype=torch.float32).item()
    v = t + torch.full_like(t, 0.0 if eps32 < F32_MIN_NORMAL else eps32)
    # A correctly rounded float32 square root (torch.sqrt's float32 kernels may be off by one
    # unit in the last place): in float64, whose rounding to float32 is then exact.
    if v.device.type == "mps":
        return torch.sqrt(v.cpu().double()).float().to(v.device)
    return torch.sqrt(v.double()).float()


def rms_norm_quantize(x: torch.Tensor, norm_weight: torch.Tensor,
                      eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """act="int8" quantization of ``RMSNorm(x) * norm_weight`` without forming it: ``q, inv``
    of :func:`quantize_activations` for ``z = x * norm_weight`` (float32 products), with ``inv``
    multiplied by :func:`rms_norm_factor` (``dot / inv`` then carries the norm's ``1 / rms``).
    Quantization does not see a row's positive scale, so this is RMSNorm then quantization up
    to where the float values round."""
    q, inv = quantize_activations(x.float() * norm_weight.float())
    if x.shape[-1] == 0:
        return q, inv
    return q, inv * rms_norm_factor(x, eps)


def rms_norm_linear_codes(x, norm_weight, eps, codes, scale, bias) -> torch.Tensor:
    """``linear_codes(RMSNorm(x), ...)`` with act="int8", the norm folded into the
    quantization (:func:`rms_norm_quantize`)."""
    q, inv = rms_norm_quantize(x, norm_weight, eps)
    return _finish_int8(q, inv, codes, scale, bias, 1, x.dtype)


def rms_norm_linear_i8(x, norm_weight, eps, weight, scale, bias=None):
    """Reference for ``torch.ops.ternary.rms_norm_linear_i8``."""
    return rms_norm_linear_codes(x, norm_weight, eps, weight, scale, bias)


def rms_norm_linear_i2(x, norm_weight, eps, weight, scale, out_features, bias=None):
    """Reference for ``torch.ops.ternary.rms_norm_linear_i2``."""
    return rms_norm_linear_codes(x, norm_weight, eps, unpack_i2(weight, out_features), scale,
                                 bias)
