"""The shared test helpers (tests/helpers.py): the assertions fail where they must, cases are
drawn in the documented order, a forced CPU kernel set is given back."""
import pytest
import torch

import ternary_ops as tops
from ternary_ops import reference

from helpers import (CUDA_REL_TOL, assert_bit_exact, assert_matches, check, forced_cpu_kernel,
                     make_case, op_call, random_scale, run_op, run_ref)


def one_ulp_up(t):
    """t with its first element moved to the next representable value of its dtype."""
    out = t.clone()
    out.view(-1)[0] = torch.nextafter(t.view(-1)[:1].float(),
                                      torch.tensor([float("inf")])).to(t.dtype)
    if torch.equal(out, t):  # bfloat16 / float16: nextafter in float32 rounds back
        bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
        out.view(bits).view(-1)[0] += 1
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_bit_exact_fails_on_one_ulp(dtype):
    want = (torch.randn(3, 5) + 2).to(dtype)
    assert_bit_exact(want.clone(), want)
    got = one_ulp_up(want)
    assert not torch.equal(got, want)
    with pytest.raises(AssertionError, match="not bit-exact at"):
        assert_bit_exact(got, want, "1 ulp")
    with pytest.raises(AssertionError, match="not bit-exact"):
        assert_matches(got, want, "int8", tol=1e-2, k=5)
    with pytest.raises(AssertionError, match="not bit-exact"):
        check(got, want, "int8", "1 ulp", rel_tol=CUDA_REL_TOL)
    # act="none" allows it
    assert_matches(got, want, "none", tol=1e-2, k=5)
    check(got, want, "none", "1 ulp", rel_tol={dtype: 1e-2})


def test_bit_exact_needs_same_dtype_and_shape():
    a = torch.tensor([1.0, 2.0])
    assert torch.equal(a, a.bfloat16())  # torch.equal alone does not see the dtype
    with pytest.raises(AssertionError, match="bfloat16"):
        assert_bit_exact(a.bfloat16(), a)
    with pytest.raises(AssertionError):
        assert_bit_exact(a[None], a)


def test_bit_exact_nan_only_where_the_other_has_nan():
    want = torch.tensor([[float("nan"), float("nan")], [1.0, float("inf")]])
    assert_bit_exact(want.clone(), want)
    for i, j, v in [(0, 0, 0.0), (1, 0, float("nan")), (1, 1, float("nan"))]:
        got = want.clone()
        got[i, j] = v
        with pytest.raises(AssertionError, match=f"not bit-exact at \\[\\[{i}, {j}\\]\\]"):
            assert_bit_exact(got, want)


def test_check_relative_error_and_finite():
    ref = torch.ones(4, 8)
    close = ref.clone()
    close[0, 0] += 0.5e-5 * ref.norm()  # relative L2 error 0.5e-5
    check(close, ref, "none", "below", rel_tol=CUDA_REL_TOL)
    far = ref.clone()
    far[0, 0] += 2e-5 * ref.norm()
    with pytest.raises(AssertionError, match="relative error"):
        check(far, ref, "none", "above", rel_tol=CUDA_REL_TOL)
    # the tolerance follows `dtype` where given
    check(far, ref, "none", "bf16 tolerance", rel_tol=CUDA_REL_TOL, dtype=torch.bfloat16)
    inf = ref.clone()
    inf[1, 1] = float("inf")
    with pytest.raises(AssertionError, match="finite"):
        check(inf, ref, "none", "finite", rel_tol={torch.float32: float("inf")}, finite=True)


def test_random_scale_shapes_and_per_channel_type():
    assert random_scale(7, True).shape == (7,) and random_scale(7, False).shape == ()
    assert random_scale(7, True).dtype == torch.float32
    with pytest.raises(TypeError):
        random_scale(7, "channel")


def test_make_case_draw_order():
    """The documented order (codes, scale, x, its gain, bias) keeps seeded cases what they were."""
    gen = torch.Generator().manual_seed(5)
    case = make_case("i2", 3, 10, 20, gen, per_channel=True, bias=True, dtype=torch.bfloat16,
                     x_gain=lambda: 2 + torch.rand(3, 1, generator=gen), scale_offset=0.5,
                     bias_dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    codes = torch.randint(-1, 2, (10, 20), generator=g, dtype=torch.int8)
    scale = torch.rand(10, generator=g) + 0.5
    x = torch.randn(3, 20, generator=g)
    x = (x * (2 + torch.rand(3, 1, generator=g))).to(torch.bfloat16)
    bias = torch.randn(10, generator=g)
    assert torch.equal(case.codes, codes) and torch.equal(case.weight, tops.pack_i2(codes))
    assert torch.equal(case.scale, scale) and torch.equal(case.bias, bias)
    assert_bit_exact(case.x, x)
    assert case.n == 10


def test_make_case_defaults_and_batch_shape():
    g = torch.Generator().manual_seed(9)
    case = make_case("i8", (2, 3), 4, 6, g, x_gain=3)
    g = torch.Generator().manual_seed(9)
    codes = torch.randint(-1, 2, (4, 6), generator=g, dtype=torch.int8)
    scale = torch.rand((), generator=g) + 0.05
    x = torch.randn(2, 3, 6, generator=g) * 3
    assert case.weight is case.codes and torch.equal(case.codes, codes)
    assert case.scale.shape == () and torch.equal(case.scale, scale)
    assert_bit_exact(case.x, x)
    assert case.bias is None


@pytest.mark.parametrize("fmt", ["i8", "i2"])
def test_op_call_runs_the_format_op(fmt):
    case = make_case(fmt, 2, 9, 33, per_channel=True, bias=True)
    op, args = op_call(fmt, case.x, case.weight, case.scale, case.n, case.bias, "int8")
    assert op is getattr(torch.ops.ternary, "linear_" + fmt)
    assert args[-2] is case.bias and args[-1] == "int8"
    want = reference.linear_codes(case.x, case.codes, case.scale, case.bias, "int8")
    assert_bit_exact(run_op(fmt, *args[:3], case.n, case.bias, "int8"), want)
    assert_bit_exact(run_ref(fmt, *args[:3], case.n, case.bias, "int8"), want)
    assert_bit_exact(case.run("int8"), case.ref("int8"))


def test_forced_cpu_kernel_gives_the_choice_back():
    tops.select_cpu_kernel("auto")
    auto = tops.cpu_kernel()
    with pytest.raises(RuntimeError, match="inside"):
        with forced_cpu_kernel("portable"):
            assert tops.cpu_kernel() == "portable"
            raise RuntimeError("inside")
    assert tops.cpu_kernel() == auto
    with pytest.raises(pytest.skip.Exception):
        with forced_cpu_kernel("no_such_isa"):
            pass
    assert tops.cpu_kernel() == auto
