"""Ternary weight formats in plain torch: quantize, pack, unpack, validate.

The formats (docs/DESIGN.md; the constants below are csrc/ternary_format.h's for the native code):

* ``i8``: int8 ``[N, K]``, each byte -1, 0 or +1.
* ``i2``: uint8 ``[ceil(N/4), K]``; byte ``[j, k]`` holds rows ``j, j+R, j+2R, j+3R``
  (``R = ceil(N/4)``) in bit pairs 0-1, 2-3, 4-5, 6-7 as code ``w + 1``; code 3 is invalid and
  padding rows hold code 1 (zero). Bit-for-bit the Hugging Face BitNet packing.
"""
from __future__ import annotations

import operator
from typing import Optional, Tuple

import torch

FORMATS = ("i8", "i2")
GRANULARITIES = ("tensor", "channel")

# i2 packing
ROWS_PER_BYTE = 4          # output rows per byte
I2_BITS_PER_CODE = 2
I2_CODE_MASK = 0b11
I2_CODE_ZERO = 0b01        # the code of w = 0 (code = w + 1); padding rows hold it
I2_CODE_INVALID = 0b11
I2_ZERO_BYTE = 0x55        # four zero codes: an all-zero i2 weight

# act="int8": inv = ACT_QMAX / max|x_row|.clamp(min=ACT_EPS)
ACT_QMAX = 127.0
ACT_EPS = 1e-5
# Largest in_features for act="int8": kernels sum int32 dots, |dot| <= 128 K < 2**31.
ACT_MAX_K = (1 << 24) - 1
# The rms_norm_linear ops' mean square is an exact integer sum: x is first rounded to
# NORM_QMAX steps of max|x_row| (clamped below at NORM_AMAX_MIN); see reference.rms_norm_factor.
NORM_QMAX = 32767.0
NORM_AMAX_MIN = 1e-30
# float32's smallest normal number: a mean square below it counts as 0 on every backend.
F32_MIN_NORMAL = 2.0 ** -126


# Format q8: int8 weights in [-Q8_WEIGHT_MAX, Q8_WEIGHT_MAX] with a scale per row (or tensor),
# for layers kept at 8 bits (the output head). act="int8" is exact for in_features <= Q8_ACT_MAX_K
# (kernels add 128 to each weight for an unsigned operand: 255 * 128 * K < 2**31).
Q8_WEIGHT_MAX = 127
Q8_ACT_MAX_K = 1 << 16


# The largest size a tensor can have (int64 sizes, strides and byte counts).
INT64_MAX = (1 << 63) - 1


def packed_rows(out_features: int) -> int:
    """Rows of the i2 packed tensor for ``out_features`` outputs: ``ceil(N / 4)``."""
    if isinstance(out_features, bool) or isinstance(out_features, float) or (
            isinstance(out_features, int) and not 0 <= out_features <= INT64_MAX):
        raise ValueError(f"out_features must be an int in [0, 2**63 - 1], got {out_features!r}")
    return (out_features + ROWS_PER_BYTE - 1) // ROWS_PER_BYTE


def check_features(in_features, out_features, format: str, where: str) -> Tuple[int, int]:
    """``(in_features, out_features)`` as ints, after checking that they are ints >= 1 and that
    a weight of that shape in ``format`` (and a float bias) can exist as a tensor: a
    ``TypeError`` or ``ValueError`` naming ``where`` otherwise."""
    sizes = []
    for name, v in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(v, bool):
            raise TypeError(f"{where}: {name} must be an int, got bool {v!r}")
        try:
            v = operator.index(v)
        except TypeError:
            raise TypeError(f"{where}: {name} must be an int, got {type(v).__name__} "
                            f"{v!r}") from None
        if v < 1:
            raise ValueError(f"{where}: {name} must be >= 1, got {v}")
        sizes.append(v)
    k, n = sizes
    rows = (n + ROWS_PER_BYTE - 1) // ROWS_PER_BYTE if check_format(format) == "i2" else n
    if rows * k > INT64_MAX or n * 8 > INT64_MAX:
        raise ValueError(f"{where}: in_features={k}, out_features={n} is too large: an {format} "
                         f"weight of {rows} x {k} bytes (or a bias of {n} values) cannot exist "
                         "as a tensor, whose size in bytes must be below 2**63")
    return k, n


def _i2_plane(packed: torch.Tensor, i: int) -> torch.Tensor:
    """The codes of bit pair ``i`` of every byte: output rows ``i*R .. i*R + R - 1``."""
    return (packed >> (I2_BITS_PER_CODE * i)) & I2_CODE_MASK


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    return format


def quantize(weight: torch.Tensor, granularity: str = "tensor",
             eps: float = 1e-8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Absmean ternary quantization (BitNet b1.58).

    ``s = mean|W|`` (over the whole tensor, or per output row for ``granularity="channel"``),
    ``T = round(W / s).clamp(-1, 1)``. Returns ``(T int8 [N, K], s float32 [] or [N])`` with
    ``W ~= s * T``.

    A weight (or, per channel, a row) that is ternary already, every value 0 or +-a (a ternary
    model stored dense), gets ``s = a`` and loses nothing: its mean would be ``a`` times its
    share of nonzero values and scale every output down by that share.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating tensor [N, K], got {weight.dim()}-D "
                         f"{weight.dtype}")
    w = weight.detach().float()
    a = w.abs()
    if granularity == "tensor":
        top = a.max() if a.numel() else a.new_zeros(())
        scale = torch.where(_ternary_valued(a, top), top, a.mean())
        denom = scale.clamp(min=eps)
    else:
        top = a.amax(dim=1) if a.shape[1] else a.new_zeros(a.shape[0])
        scale = torch.where(_ternary_valued(a, top[:, None], dim=1), top, a.mean(dim=1))
        denom = scale.clamp(min=eps)[:, None]
    codes = torch.round(w / denom).clamp_(-1, 1).to(torch.int8)
    return codes, scale.clamp(min=eps)


def _ternary_valued(a: torch.Tensor, top: torch.Tensor, dim=None) -> torch.Tensor:
    """Whether every value of ``a`` (``|W|``; over ``dim``, or all of it) is 0 or ``top`` > 0."""
    exact = (a == top) | (a == 0)
    exact = exact.all() if dim is None else exact.all(dim=dim)
    return exact & (top.squeeze(-1) > 0 if dim is not None else top > 0)


def pack_i2(codes: torch.Tensor) -> torch.Tensor:
    """Packs ternary int8 ``[N, K]`` into the i2 format ``uint8 [ceil(N/4), K]``."""
    validate_weight(codes, "i8")
    n, k = codes.shape
    r = packed_rows(n)
    padded = torch.zeros(ROWS_PER_BYTE * r, k, dtype=torch.uint8, device=codes.device)
    padded[:n] = (codes + I2_CODE_ZERO).to(torch.uint8)
    padded[n:] = I2_CODE_ZERO  # padding rows hold the zero code
    planes = padded.view(ROWS_PER_BYTE, r, k)
    packed = planes[0]
    for i in range(1, ROWS_PER_BYTE):
        packed = packed | (planes[i] << (I2_BITS_PER_CODE * i))
    return packed


def unpack_i2(packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """Unpacks i2 ``uint8 [ceil(N/4), K]`` into ternary int8 ``[N, K]``."""
    _check_i2_shape(packed, out_features)
    planes = [_i2_plane(packed, i) for i in range(ROWS_PER_BYTE)]
    return (torch.cat(planes, dim=0)[:out_features].to(torch.int8) - I2_CODE_ZERO)


def ternary_codes(weight: torch.Tensor, format: str,
                  out_features: Optional[int] = None) -> torch.Tensor:
    """The ternary int8 ``[N, K]`` of a stored weight in either format (i8: the weight
    itself)."""
    return weight if check_format(format) == "i8" else unpack_i2(weight, out_features)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, format: str,
               out_features: Optional[int] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``s * T`` as ``dtype [N, K]`` from a stored weight in either format."""
    codes = ternary_codes(weight, format, out_features)
    s = scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float().reshape(())
    return (codes.float() * s).to(dtype)


def _check_i2_shape(packed: torch.Tensor, out_features: Optional[int]) -> None:
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"i2 weight must be a 2-D uint8 tensor, got {packed.dim()}-D "
                         f"{packed.dtype}")
    if (out_features is None or isinstance(out_features, (bool, float))
            or out_features < 1 or out_features > INT64_MAX):
        raise ValueError(f"out_features must be a positive int, got {out_features!r}")
    if packed.shape[0] != packed_rows(out_features):
        raise ValueError(f"i2 weight for out_features={out_features} must have "
                         f"ceil({out_features}/4) = {packed_rows(out_features)} rows, got "
                         f"shape {tuple(packed.shape)}")


def quantize_q8(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per output row (format q8).

    ``s = max|W_row| / 127`` (a zero row gets ``s = 1``), ``Q = round(W / s)`` in [-127, 127].
    Returns ``(Q int8 [N, K], s float32 [N])`` with ``W ~= s[:, None] * Q``.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating tensor [N, K], got {weight.dim()}-D "
                         f"{weight.dtype}")
    w = weight.detach().float()
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight holds NaN or Inf; q8 quantization needs finite values")
    amax = w.abs().amax(dim=1) if w.shape[1] else w.new_zeros(w.shape[0])
    scale = torch.where(amax > 0, amax / Q8_WEIGHT_MAX, torch.ones_like(amax))
    codes = torch.round(w / scale[:, None]).clamp_(-Q8_WEIGHT_MAX, Q8_WEIGHT_MAX)
    return codes.to(torch.int8), scale


def validate_q8(weight: torch.Tensor) -> None:
    """Raises ``ValueError`` unless ``weight`` is a 2-D int8 tensor without -128."""
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"q8 weight must be a 2-D int8 tensor, got {weight.dim()}-D "
                         f"{weight.dtype}")
    bad = weight == -128
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"q8 weight has {int(bad.sum())} values of -128 (expected -127..127); "
                         f"first at {idx}")


def validate_weight(weight: torch.Tensor, format: str,
                    out_features: Optional[int] = None) -> None:
    """Raises ``ValueError`` unless ``weight`` holds valid codes of ``format``.

    ``i8``: int8 2-D with every value in {-1, 0, 1}. ``i2``: uint8 ``[ceil(N/4), K]`` with no
    code 3 and zero codes (01) in the padding rows.
    """
    if check_format(format) == "i8":
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"i8 weight must be a 2-D int8 tensor, got {weight.dim()}-D "
                             f"{weight.dtype}")
        bad = (weight < -1) | (weight > 1)
        if bool(bad.any()):
            idx = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(f"i8 weight has {int(bad.sum())} invalid values (expected -1, 0 "
                             f"or 1); first at {idx}: {int(weight[idx])}")
        return
    _check_i2_shape(weight, out_features)
    for plane in range(ROWS_PER_BYTE):
        bad = _i2_plane(weight, plane) == I2_CODE_INVALID
        if bool(bad.any()):
            j, k = (int(i) for i in bad.nonzero()[0])
            raise ValueError(f"i2 weight has {int(bad.sum())} invalid codes 0b11 in bit pair "
                             f"{plane}; first at byte [{j}, {k}] (output row "
                             f"{j + plane * weight.shape[0]})")
    r = weight.shape[0]
    pad_rows = torch.arange(ROWS_PER_BYTE * r, device=weight.device) >= out_features
    if bool(pad_rows.any()):
        planes = torch.cat([_i2_plane(weight, i) for i in range(ROWS_PER_BYTE)], dim=0)
        if bool((planes[pad_rows] != I2_CODE_ZERO).any()):
            raise ValueError(f"i2 weight padding rows (>= out_features={out_features}) must "
                             "hold the zero code 0b01")
