"""Reference semantics of the ternary ops in plain torch (docs/DESIGN.md, "Op semantics").

Ground truth for every kernel's tests, and the implementation used on devices that have no
native kernel. Runs on any device torch supports.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .formats import ACT_EPS, ACT_QMAX, Q8_WEIGHT_MAX, unpack_i2

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
    s = scale.float().reshape(-1)
    if act == "int8":
        q, inv = quantize_activations(x)
        y = _integer_dot(q, codes, wmax) / inv * s
    else:
        y = (x.float() @ codes.float().T) * s
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def linear_i8(x, weight, scale, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_i8``."""
    return linear_codes(x, weight, scale, bias, act)


def linear_i2(x, weight, scale, out_features, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_i2``."""
    return linear_codes(x, unpack_i2(weight, out_features), scale, bias, act)


def linear_q8(x, weight, scale, bias=None, act="int8"):
    """Reference for ``torch.ops.ternary.linear_q8`` (int8 weights in [-127, 127])."""
    return linear_codes(x, weight, scale, bias, act, wmax=Q8_WEIGHT_MAX)
