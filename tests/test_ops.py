"""The ops against the reference semantics and against torch.matmul on dequantized weights."""
import itertools
import subprocess
import sys
import textwrap

import pytest
import torch

import ternary_ops as tops
from ternary_ops import reference

from helpers import (CPU_TOL, DTYPES, ODD_DIMS, assert_bit_exact, assert_matches,
                     forced_cpu_kernel, make_case, random_codes, random_scale, run_op, to_format)

FORMATS = ["i8", "i2"]
ACTS = ["int8", "none"]


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n,k", list(itertools.product(ODD_DIMS, ODD_DIMS)))
def test_op_matches_reference_odd_shapes(format, act, n, k):
    per_channel, with_bias = (n + k) % 2 == 0, n % 3 != 0
    m = 1 + (n * 7 + k) % 5
    for dtype in DTYPES:
        case = make_case(format, m, n, k, per_channel=per_channel, bias=with_bias, dtype=dtype,
                         x_gain=3)
        got = case.run(act)
        want = reference.linear_codes(case.x, case.codes, case.scale, case.bias, act)
        assert got.dtype == dtype and got.shape == (m, n)
        # act="int8": same integer dot, same float epilogue: bit-identical to the reference.
        assert_matches(got, want, act, tol=CPU_TOL[dtype], k=k, what=str(dtype))


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
    got = run_op(format, x, to_format(codes, format), torch.tensor(1.0), n, None, "int8")
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
    got = run_op(format, x, to_format(codes, format), torch.tensor(1.0), n, None, "int8")
    want = reference.linear_codes(x, codes, torch.tensor(1.0), None, "int8")
    assert torch.equal(got, want)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_op_matches_matmul_on_dequantized_weights(format, act):
    case = make_case(format, 4, 257, 65, per_channel=True, bias=True)
    x, scale = case.x, case.scale
    got = case.run(act)
    dense = case.codes.float() * scale[:, None]
    a = x
    if act == "int8":
        q, inv = reference.quantize_activations(x)
        a = q / inv
    want = torch.matmul(a, dense.T) + case.bias
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_leading_dims_noncontiguous_and_empty(format, act):
    n, k = 17, 63
    case = make_case(format, (2, 5), n, k, per_channel=False)
    got = case.run(act)
    assert got.shape == (2, 5, n)
    assert torch.equal(got.reshape(10, n), case.run(act, case.x.reshape(10, k)))
    # Non-contiguous: a transposed view and a strided slice.
    xt = torch.randn(k, 6).T
    assert not xt.is_contiguous()
    assert torch.equal(case.run(act, xt), case.run(act, xt.contiguous()))
    xs = torch.randn(6, 2 * k)[:, ::2]
    assert torch.equal(case.run(act, xs), case.run(act, xs.contiguous()))
    # Empty batch.
    empty = case.run(act, torch.randn(0, 3, k))
    assert empty.shape == (0, 3, n)


@pytest.mark.parametrize("format", FORMATS)
def test_non_contiguous_weight_and_scale_dtypes(format):
    n, k = 9, 33
    codes = random_codes(n, k)
    x = torch.randn(3, k)
    scale16 = random_scale(n, True).half()
    got = run_op(format, x, to_format(codes, format), scale16, n, None, "none")
    want = reference.linear_codes(x, codes, scale16.float(), None, "none")
    torch.testing.assert_close(got, want)
    if format == "i8":
        wt = codes.T.contiguous().T  # same values, column-major storage
        assert not wt.is_contiguous()
        assert torch.equal(torch.ops.ternary.linear_i8(x, wt, scale16, None, "int8"),
                           torch.ops.ternary.linear_i8(x, codes, scale16, None, "int8"))


def test_threads_do_not_change_results():
    case = make_case("i2", 5, 1000, 257, per_channel=True)
    before = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            outs.append(case.run("int8"))
        assert torch.equal(outs[0], outs[1])
    finally:
        torch.set_num_threads(before)


def test_kernel_report_and_selection():
    names = tops.cpu_kernels_available()
    assert names[-1] == "portable" and tops.cpu_kernel() in names
    assert tops.backends()["cpu"] == tops.cpu_kernel()
    with pytest.raises(ValueError, match="not available here"):
        tops.select_cpu_kernel("no_such_isa")
    w = to_format(random_codes(33, 65), "i2")
    x = torch.randn(2, 65)
    results = []
    for name in names:
        with forced_cpu_kernel(name):
            assert tops.cpu_kernel() == name
            results.append(run_op("i2", x, w, torch.tensor(0.5), 33, None, "int8"))
    assert all(torch.equal(r, results[0]) for r in results)


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


# ---- non-finite x and empty K, on every CPU kernel set -------------------------------------

@pytest.mark.parametrize("kernel", tops.cpu_kernels_available())
@pytest.mark.parametrize("format", FORMATS)
def test_int8_nonfinite_row_gives_nan_row(kernel, format):
    """act="int8": a row of x holding NaN, +Inf or -Inf gives an all-NaN output row (the
    reference's rule); the other rows are bit-exact. M = 1 (GEMV) and M = 8, 19 (tiles, AMX).
    The bad value sits in the SIMD body, in the tail past it, or at the row's start."""
    with forced_cpu_kernel(kernel):
        for m, k, dtype in [(1, 77, torch.float32), (8, 300, torch.bfloat16), (19, 45, torch.float16)]:
            case = make_case(format, m, 13, k, per_channel=True, bias=True, dtype=dtype)
            for bad in (float("nan"), float("inf"), -float("inf")):
                x = case.x.clone()
                for row, col in [(0, k - 1), (m // 2, 0), (m - 1, k // 2)]:
                    x[row, col] = bad
                got = case.run("int8", x)
                want = case.ref("int8", x)
                assert want[m - 1].isnan().all()
                assert_bit_exact(got, want, f"{kernel} {format} M={m} K={k} {dtype} x has {bad}")


@pytest.mark.parametrize("kernel", tops.cpu_kernels_available())
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_empty_k_gives_bias(kernel, format, act):
    """K = 0: every output is the bias (zero without one), at every M, after a call with K > 0
    on the same thread. The shared op frame decides K = 0 before any kernel runs; the kernels'
    own K = 0 path (AMX: no stale accumulators) is checked by the native harness."""
    with forced_cpu_kernel(kernel):
        for m in (1, 8, 16, 33):
            warm = make_case(format, m, 40, 256, bias=True)
            warm.run(act)
            case = make_case(format, m, 40, 0, bias=True)
            got = case.run(act)
            assert_bit_exact(got, case.ref(act), f"{kernel} {format} {act} M={m} K=0")
            assert torch.equal(got, case.bias.expand(m, 40))
            nobias = run_op(format, case.x, case.weight, case.scale, 40, None, act)
            assert torch.equal(nobias, torch.zeros(m, 40))


def test_large_call_scratch_is_released():
    """The per-thread scratch of one large call ([4096, 8192] bfloat16 x: 160 MiB of float32
    rows and int8 codes) is freed when the call ends, in a process of its own (resident memory
    is per process)."""
    script = textwrap.dedent("""
        import torch, ternary_ops as tops
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096
        torch.set_num_threads(1)
        w = tops.pack_i2(torch.randint(-1, 2, (8, 8192), dtype=torch.int8))
        s = torch.ones(())
        torch.ops.ternary.linear_i2(torch.randn(4, 8192), w, s, 8, None, "int8")  # warm
        before = rss()
        x = torch.randn(4096, 8192).bfloat16()
        torch.ops.ternary.linear_i2(x, w, s, 8, None, "int8")
        del x
        print((rss() - before) / 2**20)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    grown_mib = float(out.stdout.split()[-1])
    assert grown_mib < 40, f"{grown_mib:.0f} MiB still resident after one large call"


def test_empty_n_with_huge_expanded_x_allocates_nothing():
    """N = 0 returns an empty [..., 0] output before staging x: a zero-stride x of 2^34
    elements costs no memory."""
    x = torch.zeros(1).expand(2**17, 2**17)
    w = torch.zeros(0, 2**17, dtype=torch.int8)
    for act in ACTS:
        y = torch.ops.ternary.linear_i8(x, w, torch.ones(()), None, act)
        assert y.shape == (2**17, 0)
