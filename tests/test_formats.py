"""Quantization, packing and validation of the weight formats."""
import pytest
import torch

import ternary_ops as tops
from ternary_ops.formats import packed_rows

from helpers import ODD_DIMS, random_codes


@pytest.mark.parametrize("n", ODD_DIMS[:6])
@pytest.mark.parametrize("k", [1, 7, 64])
def test_pack_unpack_roundtrip(n, k):
    codes = random_codes(n, k)
    packed = tops.pack_i2(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (packed_rows(n), k)
    assert torch.equal(tops.unpack_i2(packed, n), codes)


def test_pack_layout_matches_definition():
    # Byte [j, k] holds rows j, j+R, j+2R, j+3R in bit pairs 0-1 .. 6-7 as code w + 1.
    n, k = 10, 3
    codes = random_codes(n, k)
    packed = tops.pack_i2(codes)
    r = packed_rows(n)
    for row in range(4 * r):
        j, plane = row % r, row // r
        got = (packed[j] >> (2 * plane)) & 3
        want = (codes[row] + 1).to(torch.uint8) if row < n else torch.ones(k, dtype=torch.uint8)
        assert torch.equal(got, want), row


def test_quantize_absmean_tensor_and_channel():
    w = torch.randn(9, 31)
    codes, s = tops.quantize(w, "tensor")
    assert s.shape == () and s.dtype == torch.float32
    assert torch.allclose(s, w.abs().mean())
    assert torch.equal(codes, torch.round(w / w.abs().mean()).clamp(-1, 1).to(torch.int8))
    codes_c, s_c = tops.quantize(w, "channel")
    assert s_c.shape == (9,)
    assert torch.allclose(s_c, w.abs().mean(dim=1))
    assert torch.equal(codes_c, torch.round(w / s_c[:, None]).clamp(-1, 1).to(torch.int8))


def test_quantize_zero_weight_is_finite():
    codes, s = tops.quantize(torch.zeros(4, 5))
    assert torch.equal(codes, torch.zeros(4, 5, dtype=torch.int8))
    assert torch.isfinite(s).all()


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="granularity must be one of"):
        tops.quantize(torch.randn(3, 4), "row")
    with pytest.raises(ValueError, match="2-D floating tensor"):
        tops.quantize(torch.randn(3, 4, 5))


def test_validate_rejects_invalid_codes():
    packed = tops.pack_i2(random_codes(8, 5))
    packed[1, 3] |= 0b11 << 4
    with pytest.raises(ValueError, match=r"invalid codes 0b11 in bit pair 2; first at byte \[1, 3\]"):
        tops.validate_weight(packed, "i2", 8)
    with pytest.raises(ValueError, match="expected -1, 0 or 1"):
        tops.validate_weight(torch.tensor([[0, 2]], dtype=torch.int8), "i8")
    # Padding rows must hold the zero code.
    padded = tops.pack_i2(random_codes(5, 4))  # R = 2, rows 5..7 are padding
    padded[1, 0] = padded[1, 0] & ~(0b11 << 6)  # row 7 -> code 00 (-1)
    with pytest.raises(ValueError, match="padding rows"):
        tops.validate_weight(padded, "i2", 5)
    with pytest.raises(ValueError, match=r"ceil\(5/4\) = 2 rows"):
        tops.validate_weight(tops.pack_i2(random_codes(9, 4)), "i2", 5)


def test_dequantize_matches_scale_times_codes():
    codes = random_codes(6, 7)
    s = torch.rand(6)
    for fmt in ("i8", "i2"):
        w = codes if fmt == "i8" else tops.pack_i2(codes)
        assert torch.equal(tops.dequantize(w, s, fmt, 6), codes.float() * s[:, None])


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantize_keeps_ternary_valued_weights(granularity):
    """A weight whose values already are 0 and +-a per tensor (or per row) comes back as those
    codes with s = a, not the absmean (a times the share of nonzeros); any other weight keeps
    the absmean."""
    gen = torch.Generator().manual_seed(3)
    codes = torch.randint(-1, 2, (9, 37), generator=gen).to(torch.int8)
    codes[0] = 0  # an all-zero row
    a = (torch.rand(9, 1, generator=gen) + 0.01 if granularity == "channel"
         else torch.tensor(0.0123))
    t, s = tops.quantize(codes.float() * a, granularity)
    assert torch.equal(t, codes)
    want = a.reshape(-1) if granularity == "channel" else a
    if granularity == "channel":
        want = want.clone()
        want[0] = 1e-8  # the all-zero row: the clamp, as before
    assert torch.equal(s, want)
    w = torch.randn(9, 37, generator=gen)
    t, s = tops.quantize(w, granularity)
    mean = w.abs().mean() if granularity == "tensor" else w.abs().mean(dim=1)
    assert torch.equal(s, mean)
