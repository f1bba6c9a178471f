"""The ops on arm64: they dispatch to the NEON kernel sets and match the reference.

Meant for an arm64 machine; on x86 CI, tools/arm64/ci.sh runs this file inside an arm64 Debian
chroot under qemu-user (about 300x slower than native, hence the small shapes). There,
TERNARY_NEON_EXPECT names the set the dispatcher must pick for qemu's CPU (neon_i8mm).
"""
import os
import platform

import pytest
import torch

import ternary_ops as tops
from ternary_ops import reference

from helpers import NEON_TOL, assert_matches, forced_cpu_kernel, make_case

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("aarch64", "arm64"),
    reason="NEON kernels build and run only on arm64 (x86 CI runs this file in an arm64 chroot "
           "through tools/arm64/ci.sh)")

NEON_SETS = ("neon_i8mm", "neon_dotprod", "neon")

# (M, N, K): decoding (M = 1) and prefill (M > 1, SMMLA blocks of 4 plus a tail) shapes with N, K
# off every block size (8 rows, 16/64 columns), and the 1 x 1 x 1 corner.
SHAPES = [(1, 67, 131), (5, 33, 200), (2, 9, 17), (1, 1, 1)]


@pytest.fixture
def neon_set(request):
    with forced_cpu_kernel(request.param) as name:
        yield name


def test_dispatcher_picks_neon():
    avail = tops.cpu_kernels_available()
    assert "neon" in avail and avail[-1] == "portable", avail
    expect = os.environ.get("TERNARY_NEON_EXPECT")
    if expect:
        assert tops.cpu_kernel() == expect, (tops.cpu_kernel(), avail)
    else:
        assert tops.cpu_kernel() in NEON_SETS


@pytest.mark.parametrize("neon_set", NEON_SETS, indirect=True)
@pytest.mark.parametrize("fmt", ["i8", "i2"])
def test_neon_matches_reference(neon_set, fmt):
    assert tops.cpu_kernel() == neon_set
    for i, (m, n, k) in enumerate(SHAPES):
        for act in ("int8", "none"):
            dtype = torch.bfloat16 if i == 1 else torch.float32
            _, codes, w, scale, x, bias = make_case(
                fmt, m, n, k, torch.Generator().manual_seed(100 * i + k), per_channel=i % 2 == 0,
                bias=i != 2, dtype=dtype, x_gain=3)
            want = reference.linear_codes(x, codes, scale, bias, act)
            if fmt == "i8":
                got = tops.linear_i8(x, w, scale, bias, act)
            else:
                got = tops.linear_i2(x, w, scale, n, bias, act)
            assert got.dtype == dtype and got.shape == (m, n)
            assert_matches(got, want, act, tol=NEON_TOL[dtype], k=k,
                           what=str((neon_set, fmt, act, m, n, k)))


def test_int8_dot_exact_saturating():
    # +-127/-128 activations with +-1 weights: every product at its largest; inv = 1 and s = 1,
    # so the output is the integer dot itself.
    n, k = 13, 300
    g = torch.Generator().manual_seed(7)
    codes = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8)
    x = (torch.randint(0, 2, (4, k), generator=g) * 254 - 127).float()
    x[:, 1::7] = -128.0
    x[:, 0] = 127.0
    x = x.clamp(-127, 127)  # max |x| is 127, so inv = 1 exactly
    want = (x.double() @ codes.double().T).float()
    for fmt_out in (tops.linear_i8(x, codes, torch.tensor(1.0), None, "int8"),
                    tops.linear_i2(x, tops.pack_i2(codes), torch.tensor(1.0), n, None, "int8")):
        assert torch.equal(fmt_out, want)


def test_ternary_linear_module_on_neon():
    torch.manual_seed(3)
    lin = torch.nn.Linear(40, 21)
    x = torch.randn(3, 40)
    for fmt in ("i2", "i8"):
        mod = tops.TernaryLinear.from_linear(lin, format=fmt, act="int8")
        got = mod(x)
        codes = tops.unpack_i2(mod.weight, 21) if fmt == "i2" else mod.weight
        want = reference.linear_codes(x, codes, mod.weight_scale, mod.bias, "int8")
        assert torch.equal(got, want)


@pytest.mark.parametrize("neon_set", NEON_SETS, indirect=True)
@pytest.mark.parametrize("fmt", ["i8", "i2"])
def test_rms_norm_linear_on_neon(neon_set, fmt):
    # The folded RMSNorm's prologue (csrc/cpu/rms_norm.cpp, compiled for arm64) then each NEON
    # set's quantizer: bit for bit the reference, on ordinary and extreme rows.
    assert tops.cpu_kernel() == neon_set
    g = torch.Generator().manual_seed(11)
    for i, (m, n, k) in enumerate(SHAPES):
        dtype = torch.bfloat16 if i % 2 else torch.float32
        _, codes, w, scale, x, bias = make_case(fmt, m, n, k, g, per_channel=i % 2 == 0,
                                                bias=i != 2, dtype=dtype, x_gain=3)
        if i == 1:  # a zero row, a tiny row, a single spike, a NaN
            x[0], x[1], x[2] = 0, x[1] * 1e-30, 0
            x[2, k // 2] = 5
            x[3, 7] = float("nan")
        gamma = (torch.rand(k, generator=g) * 2 - 0.5).to(dtype)
        for eps in (1e-6, 0.0):
            if fmt == "i8":
                want = reference.rms_norm_linear_i8(x, gamma, eps, w, scale, bias)
                got = tops.rms_norm_linear_i8(x, gamma, eps, w, scale, bias)
            else:
                want = reference.rms_norm_linear_i2(x, gamma, eps, w, scale, n, bias)
                got = tops.rms_norm_linear_i2(x, gamma, eps, w, scale, n, bias)
            assert torch.equal(got.isnan(), want.isnan()), (neon_set, fmt, m, n, k, eps)
            assert torch.equal(got.nan_to_num(), want.nan_to_num()), (neon_set, fmt, m, n, k, eps)
