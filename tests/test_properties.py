"""Property-based tests (hypothesis): shapes and values drawn at random."""
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import ternary_ops as tops
from ternary_ops import ops, reference

from helpers import CPU_TOL, assert_matches, make_case, random_codes

dims = st.integers(min_value=1, max_value=130)


@settings(max_examples=60, deadline=None)
@given(n=dims, k=dims, m=st.integers(0, 6), fmt=st.sampled_from(["i8", "i2"]),
       act=st.sampled_from(["int8", "none"]), per_channel=st.booleans(), with_bias=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**31 - 1), magnitude=st.sampled_from([1e-6, 1.0, 1e4]))
def test_op_equals_reference(n, k, m, fmt, act, per_channel, with_bias, dtype, seed, magnitude):
    _, codes, w, scale, x, bias = make_case(fmt, m, n, k, torch.Generator().manual_seed(seed),
                                            per_channel=per_channel, bias=with_bias, dtype=dtype,
                                            x_gain=magnitude, scale_offset=0.01)
    if fmt == "i2":
        got = tops.linear_i2(x, w, scale, n, bias, act)
    else:
        got = tops.linear_i8(x, w, scale, bias, act)
    want = reference.linear_codes(x, codes, scale, bias, act)
    assert_matches(got, want, act, tol=CPU_TOL[dtype], k=k, gain=magnitude)


@settings(max_examples=40, deadline=None)
@given(n=dims, k=dims, seed=st.integers(0, 2**31 - 1))
def test_pack_unpack_and_validate(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    codes = random_codes(n, k, g)
    packed = tops.pack_i2(codes)
    tops.validate_weight(packed, "i2", n)
    assert torch.equal(tops.unpack_i2(packed, n), codes)
    # Any single corrupted code (11) is found.
    j = int(torch.randint(0, packed.shape[0], (), generator=g))
    c = int(torch.randint(0, k, (), generator=g))
    plane = int(torch.randint(0, 4, (), generator=g))
    packed[j, c] |= 3 << (2 * plane)
    with pytest.raises(ValueError, match="invalid codes"):
        tops.validate_weight(packed, "i2", n)


def test_convert_releases_dense_weights():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    refs = [weakref.ref(m.weight) for m in model]
    tops.convert(model, exclude=())
    gc.collect()
    assert all(r() is None for r in refs)


def test_fallback_path_warns_once_and_matches(monkeypatch):
    # Devices without a native kernel reach the CompositeExplicitAutograd fallback; call it
    # directly here since this machine's only device (CPU) has native kernels.
    monkeypatch.setattr(ops, "_warned_devices", set())
    codes = random_codes(6, 9)
    x = torch.randn(2, 9)
    with pytest.warns(RuntimeWarning, match="no native kernel .* slow"):
        y = ops._linear_i2_fallback(x, tops.pack_i2(codes), torch.tensor(0.3), 6, None, "int8")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops._linear_i8_fallback(x, codes, torch.tensor(0.3), None, "int8")
    assert torch.equal(y, tops.linear_i2(x, tops.pack_i2(codes), torch.tensor(0.3), 6, None, "int8"))
    with pytest.raises(ValueError, match="act must be"):
        ops._linear_i8_fallback(x, codes, torch.tensor(0.3), None, "int4")
