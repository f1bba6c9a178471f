"""The MPS backend (Metal kernels through csrc/aten/ops_mps.mm) on a real Apple GPU.

Runs only on a Mac with an MPS-capable torch and a macOS build of ternary_ops (setup.py builds
the Metal glue there); skipped elsewhere. Our CI has no Apple hardware: there the kernel text is
verified under emulation (tests/test_metal_emulated.py) and the glue is type-checked only, so
these tests are the proof of the glue and the GPU. act="int8" must match the reference bit for
bit (the library is compiled with fast math off for exactly this); act="none" to float rounding.
"""
import warnings

import pytest
import torch
from torch import nn

import ternary_ops as tops

import helpers
from helpers import MPS_REL_TOL, make_case, op_call, random_weight, run_op, run_ref

HAVE_MPS = torch.backends.mps.is_available()
pytestmark = pytest.mark.skipif(
    not HAVE_MPS or not tops.backends().get("mps", False),
    reason=("needs an Apple GPU (torch.backends.mps.is_available()) and a macOS build of "
            "ternary_ops with the Metal backend; on Linux CI the kernels are checked under "
            "emulation in tests/test_metal_emulated.py instead"))

FORMATS = ["i2", "i8"]
ACTS = ["int8", "none"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (M, N, K): M = 1 takes the matvec, M > 1 the tiled matmul; odd N and K cross every block;
# the K = 40000 decode exceeds threadgroup memory and falls back to the matmul kernel.
SHAPES = [(1, 1, 1), (1, 5, 7), (1, 17, 63), (1, 257, 1041), (1, 2560, 2560), (1, 6912, 2560),
          (1, 3, 40000), (2, 3, 16), (5, 31, 100), (33, 129, 257), (64, 300, 512),
          (7, 1000, 4096)]


@pytest.fixture(autouse=True)
def no_fallback():
    """The native kernel must serve mps: the slow reference path would warn."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*no native kernel.*")
        yield


def check(out, ref, act, what):
    """helpers.check with MPS's tolerances (keyed by the output's dtype)."""
    helpers.check(out, ref, act, what, rel_tol=MPS_REL_TOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_op_vs_reference(fmt, act, dtype):
    gen = torch.Generator().manual_seed(0)
    for i, (M, N, K) in enumerate(SHAPES):
        case = make_case(fmt, M, N, K, gen, per_channel=i % 2 == 0, bias=i % 3 != 0, dtype=dtype,
                         scale_offset=0.5)
        out = case.to("mps").run(act)
        check(out, case.ref(act), act, f"{fmt} {act} {dtype} {M}x{N}x{K}")


@pytest.mark.parametrize("fmt", FORMATS)
def test_views_offsets_and_batch_dims(fmt):
    """Storage offsets (odd ones disable 16-byte loads), non-contiguous x, 3-D x, mixed dtypes."""
    gen = torch.Generator().manual_seed(1)
    N, K = 37, 256
    _, w, scale = random_weight(fmt, N, K, gen, per_channel=True, scale_offset=0.5)
    flat = torch.zeros(w.numel() + 3, dtype=w.dtype)
    flat[3:] = w.reshape(-1)
    w_off = flat.to("mps")[3:].view(w.shape)  # byte offset 3 in its MTLBuffer
    x = torch.randn(2, 3, 2 * K, generator=gen)[..., ::2]  # non-contiguous, 3-D
    scale16, bias_bf16 = scale.half(), torch.randn(N, generator=gen).bfloat16()
    for act in ACTS:
        out = run_op(fmt, x.to("mps"), w_off, scale16.to("mps"), N, bias_bf16.to("mps"), act)
        ref = run_ref(fmt, x, w, scale16, N, bias_bf16, act)
        check(out, ref, act, f"{fmt} {act} views")
        out1 = run_op(fmt, x[0, :1].to("mps"), w_off, scale.to("mps"), N, None, act)
        check(out1, run_ref(fmt, x[0, :1], w, scale, N, None, act), act, f"{fmt} {act} M=1 view")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_ternary_linear_on_mps(fmt, act):
    torch.manual_seed(2)
    dense = nn.Linear(300, 130)
    layer = tops.TernaryLinear.from_linear(dense, format=fmt, act=act)
    x = torch.randn(4, 300)
    want = layer(x)  # CPU kernels: bit-exact with the reference for act="int8"
    got = layer.to("mps")(x.to("mps"))
    check(got, want, act, f"TernaryLinear {fmt} {act}")
    # Many layers queued before one synchronize: nothing is committed or waited on per op.
    y = x.to("mps")[:1]
    for _ in range(50):
        y = torch.nn.functional.pad(layer(y), (0, 300 - 130))
    torch.mps.synchronize()
    assert torch.isfinite(y.cpu()).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_compile_on_mps(fmt):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    tops.convert(model, format=fmt)
    model = model.to("mps")
    x = torch.randn(5, 64, device="mps")
    eager = model(x)
    compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled.cpu(), eager.cpu())


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_opcheck_on_mps(fmt, act):
    gen = torch.Generator().manual_seed(4)
    _, w, scale = random_weight(fmt, 19, 33, gen, per_channel=True, scale_offset=0.5)
    for M in (1, 4):
        x = torch.randn(M, 33, generator=gen).to("mps")
        bias = torch.randn(19, generator=gen).to("mps")
        op, args = op_call(fmt, x, w.to("mps"), scale.to("mps"), 19, bias, act)
        torch.library.opcheck(op, args)


def test_bad_input_raises_on_mps():
    w = torch.zeros(3, 8, dtype=torch.int8, device="mps")
    scale = torch.ones((), device="mps")
    with pytest.raises(ValueError, match="in_features = weight.size"):
        torch.ops.ternary.linear_i8(torch.randn(2, 7, device="mps"), w, scale, None, "int8")
    with pytest.raises(ValueError, match="act must be"):
        torch.ops.ternary.linear_i8(torch.randn(2, 8, device="mps"), w, scale, None, "int4")
    with pytest.raises(ValueError, match="same device|device"):
        torch.ops.ternary.linear_i8(torch.randn(2, 8, device="mps"), w.cpu(), scale, None, "int8")
