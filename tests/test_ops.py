"""The ops against the reference semantics and against torch.matmul on dequantized weights."""
import itertools

import pytest
import torch

import ternary_ops as tops
from ternary_ops import reference

from conftest import DTYPES, ODD_DIMS, random_codes, random_scale, run_op, tolerance

FORMATS = ["i8", "i2"]
ACTS = ["int8", "none"]


def reference_for(format, x, codes, scale, bias, act):
    return reference.linear_codes(x, codes, scale, bias, act)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,k", list(itertools.product(ODD_DIMS, ODD_DIMS)))
def test_op_matches_reference_odd_shapes(format, act, n, k):
    per_channel, with_bias = (n + k) % 2 == 0, n % 3 != 0
    m = 1 + (n * 7 + k) % 5
    codes = random_codes(n, k)
    scale = random_scale(n, per_channel)
    for dtype in DTYPES:
        x = (torch.randn(m, k) * 3).to(dtype)
        bias = torch.randn(n).to(dtype) if with_bias else None
        got = run_op(format, x, codes, scale, bias, act)
        want = reference_for(format, x, codes, scale, bias, act)
        assert got.dtype == dtype and got.shape == (m, n)
        if act == "int8":
            # Same integer dot, same float epilogue: bit-identical to the reference.
            assert torch.equal(got, want), (dtype, (got.float() - want.float()).abs().max())
        else:
            rtol, atol = tolerance(dtype)
            torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol * k ** 0.5)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("m", [1, 2, 8, 33])
def test_int8_integer_dot_is_exact(format, m):
    # Integer x whose row max is 127 quantizes to itself (inv = 1), so with s = 1 the output is
    # the integer dot itself, exactly representable in float32.
    n, k = 67, 1000
    codes = random_codes(n, k)
    x = torch.randint(-128, 128, (m, k)).float()
    x[:, 0] = 127.0
    x = x.clamp(-127, 127)
    got = run_op(format, x, codes, torch.tensor(1.0), None, "int8")
    want = (x.double() @ codes.double().T).float()
    assert torch.equal(got, want)


@pytest.mark.parametrize("format", FORMATS)
def test_int8_adversarial_saturation(format):
    # All activations +-127/-128 and all weights +-1: the int16-saturation worst case for
    # pairwise-summing SIMD instructions.
    n, k, m = 64, 4096, 3
    codes = (torch.randint(0, 2, (n, k), dtype=torch.int8) * 2 - 1)
    codes[0] = 1
    codes[1] = -1
    x = torch.where(torch.rand(m, k) < 0.5, -1.0, 1.0)
    x[1] = 1.0
    x[2] = -1.0
    x[:, ::7] = -128.0 / 127.0  # quantizes to -128 (inv = 127)
    got = run_op(format, x, codes, torch.tensor(1.0), None, "int8")
    want = reference.linear_codes(x, codes, torch.tensor(1.0), None, "int8")
    assert torch.equal(got, want)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_op_matches_matmul_on_dequantized_weights(format, act):
    n, k = 257, 65
    codes = random_codes(n, k)
    scale = random_scale(n, True)
    x = torch.randn(4, k)
    bias = torch.randn(n)
    got = run_op(format, x, codes, scale, bias, act)
    dense = codes.float() * scale[:, None]
    a = x
    if act == "int8":
        q, inv = reference.quantize_activations(x)
        a = q / inv
    want = torch.matmul(a, dense.T) + bias
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_leading_dims_noncontiguous_and_empty(format, act):
    n, k = 17, 63
    codes = random_codes(n, k)
    scale = random_scale(n, False)
    x3 = torch.randn(2, 5, k)
    got = run_op(format, x3, codes, scale, None, act)
    assert got.shape == (2, 5, n)
    assert torch.equal(got.reshape(10, n), run_op(format, x3.reshape(10, k), codes, scale, None,
                                                  act))
    # Non-contiguous: a transposed view and a strided slice.
    xt = torch.randn(k, 6).T
    assert not xt.is_contiguous()
    assert torch.equal(run_op(format, xt, codes, scale, None, act),
                       run_op(format, xt.contiguous(), codes, scale, None, act))
    xs = torch.randn(6, 2 * k)[:, ::2]
    assert torch.equal(run_op(format, xs, codes, scale, None, act),
                       run_op(format, xs.contiguous(), codes, scale, None, act))
    # Empty batch.
    empty = run_op(format, torch.randn(0, 3, k), codes, scale, None, act)
    assert empty.shape == (0, 3, n)


@pytest.mark.parametrize("format", FORMATS)
def test_non_contiguous_weight_and_scale_dtypes(format):
    n, k = 9, 33
    codes = random_codes(n, k)
    x = torch.randn(3, k)
    scale16 = random_scale(n, True).half()
    got = run_op(format, x, codes, scale16, None, "none")
    want = reference.linear_codes(x, codes, scale16.float(), None, "none")
    torch.testing.assert_close(got, want)
    if format == "i8":
        wt = codes.T.contiguous().T  # same values, column-major storage
        assert not wt.is_contiguous()
        assert torch.equal(torch.ops.ternary.linear_i8(x, wt, scale16, None, "int8"),
                           torch.ops.ternary.linear_i8(x, codes, scale16, None, "int8"))


def test_threads_do_not_change_results():
    codes = random_codes(1000, 257)
    x = torch.randn(5, 257)
    scale = random_scale(1000, True)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(run_op("i2", x, codes, scale, None, "int8"))
        assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(before)


def test_kernel_report_and_selection():
    names = tops.cpu_kernels_available()
    assert names[-1] == "portable" and tops.cpu_kernel() in names
    assert tops.backends()["cpu"] == tops.cpu_kernel()
    with pytest.raises(ValueError, match="not available here"):
        tops.select_cpu_kernel("no_such_isa")
    codes = random_codes(33, 65)
    x = torch.randn(2, 65)
    try:
        results = []
        for name in names:
            tops.select_cpu_kernel(name)
            assert tops.cpu_kernel() == name
            results.append(run_op("i2", x, codes, torch.tensor(0.5), None, "int8"))
        assert all(torch.equal(r, results[0]) for r in results)
    finally:
        tops.select_cpu_kernel("auto")


def test_meta_and_fallback_device():
    codes = random_codes(5, 7)
    w = tops.pack_i2(codes)
    out = torch.ops.ternary.linear_i2(torch.empty(3, 7, device="meta"), w.to("meta"),
                                      torch.ones((), device="meta"), 5, None, "int8")
    assert out.shape == (3, 5) and out.device.type == "meta"


def test_env_var_forces_kernel_set():
    import os
    import subprocess
    import sys
    code = "import ternary_ops as t; print(t.cpu_kernel())"
    env = dict(os.environ, TERNARY_OPS_KERNEL="portable")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "portable", out.stderr
    env["TERNARY_OPS_KERNEL"] = "no_such_isa"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "TERNARY_OPS_KERNEL=no_such_isa is not available" in out.stderr
