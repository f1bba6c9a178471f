"""CUDA kernels vs the reference (ternary_ops.reference, evaluated on the CPU).

Skipped unless torch sees a GPU and the extension was built with the CUDA backend. act="int8"
must match the reference bit for bit (integer dot, then the same float32 epilogue steps and the
same final cast); act="none" to float rounding. The shapes cross every kernel boundary: the GEMV
row counts (1, 2, 3-4, 5-8), the tensor-core tiles past 8 rows (16-, 32- and 64-row warp tiles),
K and N that are multiples of no block size, and weights that are not 16-byte aligned.
"""
import itertools

import pytest
import torch

import ternary_ops as tops

import helpers
from helpers import (CUDA_REL_TOL, DTYPES, assert_bit_exact, dtype_id, make_case, random_weight,
                     run_op, run_ref)

FORMATS = ["i2", "i8"]
ACTS = ["int8", "none"]

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not tops.backends().get("cuda", False),
    reason="needs a CUDA GPU and a CUDA build of ternary_ops")

# (M, N, K): odd sizes on purpose; M crosses the GEMV (<= 8) / mma (> 8) boundary.
SHAPES = [(1, 1, 1), (1, 5, 7), (2, 3, 16), (3, 13, 33), (4, 64, 64), (5, 31, 100),
          (8, 257, 1000), (9, 31, 65), (16, 100, 130), (17, 45, 64), (33, 129, 257),
          (64, 300, 512), (130, 77, 4100), (1, 2560, 2560), (7, 1000, 4096),
          # act="int8" GEMV, M <= 2: quantized in the kernel up to M * K = 32768, pre-pass
          # above it; M > 2: pre-pass and the block kernel.
          (2, 600, 16384), (8, 70, 4100), (1, 9, 33000),
          # K % 4 == 0 and x aligned: x quantized from registers where it fits; else two passes.
          (1, 3000, 8192), (2, 1000, 6000), (1, 500, 7001),
          # mma: many n tiles, k-steps not a multiple of the 8 k-split warps, M past 64; more n
          # tiles than SMs (one step in flight) and fewer (four or two, m16 and m32 tiles).
          (20, 3001, 600), (100, 515, 1472), (12, 4500, 200), (24, 4500, 130)]


def check(out, ref, act, dtype, what):
    """helpers.check with CUDA's tolerances (keyed by ``dtype``); the output must be finite."""
    helpers.check(out, ref, act, what, rel_tol=CUDA_REL_TOL, dtype=dtype, finite=True)


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("act", ["int8", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_ops_match_reference(fmt, act, dtype, fresh_seed):
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (m, n, k) in enumerate(SHAPES):
        gran = "channel" if i % 2 else "tensor"
        # x: a normal sample times 0.1 + 3 * U[0, 1) per row; bias float32 whatever x's dtype
        case = make_case(fmt, m, n, k, gen, per_channel=gran == "channel", bias=i % 3 == 0,
                         dtype=dtype, x_gain=lambda: 0.1 + 3 * torch.rand(m, 1, generator=gen),
                         scale_offset=0.5, bias_dtype=torch.float32)
        out = case.to("cuda").run(act)
        torch.cuda.synchronize()
        check(out, case.ref(act), act, dtype,
              f"{fmt}/{act}/{dtype} M={m} N={n} K={k} {gran} bias={case.bias is not None}")


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("act", ["int8", "none"])
def test_every_row_count_and_tile(fmt, act):
    """M = 1..12 and the tile boundaries of the mma path, one shape, fresh data each."""
    gen = torch.Generator().manual_seed(7)
    n, k = 203, 328
    _, w, scale = random_weight(fmt, n, k, gen, per_channel=True, scale_offset=0.5)
    for m in list(range(1, 13)) + [15, 16, 31, 32, 63, 64, 65, 200]:
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        out = run_op(fmt, x.cuda(), w.cuda(), scale.cuda(), n, None, act)
        check(out, run_ref(fmt, x, w, scale, n, None, act), act, torch.bfloat16,
              f"{fmt}/{act} M={m}")


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("act", ["int8", "none"])
def test_unaligned_and_strided(fmt, act):
    """Weights at an odd address (scalar-load path), non-contiguous and 3-D x, M = 0."""
    gen = torch.Generator().manual_seed(11)
    n, k = 64, 256
    _, w, scale = random_weight(fmt, n, k, gen, per_channel=False, scale_offset=0.5)
    w_odd = helpers.with_offset(w, 1, "cuda")
    assert w_odd.data_ptr() % 16 != 0
    for m in (1, 6, 40):
        x = torch.randn(m, k, generator=gen)
        out = run_op(fmt, x.cuda(), w_odd, scale.cuda(), n, None, act)
        check(out, run_ref(fmt, x, w, scale, n, None, act), act, torch.float32, f"odd M={m}")
    x3 = torch.randn(2, 3, 2 * k, generator=gen)[..., ::2]  # non-contiguous, 3-D
    out = run_op(fmt, x3.cuda(), w.cuda(), scale.cuda(), n, None, act)
    assert out.shape == (2, 3, n)
    check(out, run_ref(fmt, x3, w, scale, n, None, act), act, torch.float32, "3-D strided")
    x0 = torch.randn(0, k, device="cuda")
    assert run_op(fmt, x0, w.cuda(), scale.cuda(), n, None, act).shape == (0, n)


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_gemv_x_alignment_and_paths(fmt, dtype):
    """act="int8" GEMV: x at an address that forbids vector loads or allows only 8-byte ones, K
    not a multiple of 4, 8 or 16, the in-kernel quantization and the pre-pass, more units than
    warps (several per warp), the block kernel (M > 2), and few long rows split over 2-4 warps
    (even and uneven batch counts)."""
    gen = torch.Generator().manual_seed(5)
    for m, n, k in [(1, 4100, 1000), (3, 37, 1001), (8, 64, 4096), (8, 33, 4097), (1, 5, 40000),
                    (1, 64, 14336), (2, 9, 9000), (2, 600, 20000), (4, 100, 3000),
                    # x from registers, 16 and 4 groups of 4 per thread (i2; 8 and 2 for i8)
                    (1, 1000, 14336), (1, 2000, 4096),
                    # the pre-pass (M > 2) from registers, 8 and 16 groups per thread
                    (3, 40, 12000), (4, 24, 30000),
                    # K % 4 == 0, K % 8 != 0: 2-byte x rows not 16-byte aligned (two passes)
                    (1, 300, 1004), (2, 50, 2052)]:
        _, w, scale = random_weight(fmt, n, k, gen, per_channel=True, scale_offset=0.5)
        x = torch.randn(m, k, generator=gen).to(dtype)
        # x shifted by 1 element, and by 4 (8 bytes for bf16 / half: 8-byte loads only)
        shifted = []
        for shift in (1, 4):
            buf = torch.empty(m * k + shift, dtype=dtype, device="cuda")
            shifted.append(buf[shift:].view(m, k))
            shifted[-1].copy_(x)
        for xd in (*shifted, x.cuda()):
            out = run_op(fmt, xd, w.cuda(), scale.cuda(), n, None, "int8")
            check(out, run_ref(fmt, x, w, scale, n, None, "int8"), "int8", dtype,
                  f"{fmt} M={m} N={n} K={k} x at {xd.data_ptr() % 16}")


def test_extreme_activations_are_exact():
    """Rows with huge, tiny and all-zero values: quantization clamps and rounds like the
    reference."""
    gen = torch.Generator().manual_seed(3)
    n, k = 96, 515
    _, w, scale = random_weight("i2", n, k, gen, per_channel=True, scale_offset=0.5)
    x = torch.randn(6, k, generator=gen)
    x[1] *= 1e30
    x[2] *= 1e-30
    x[3] = 0
    x[4, ::7] = 0.5  # exact halves after scaling are common: round half to even
    x[5] = torch.arange(k) % 255 - 127.0
    for m in (6, 12):
        xm = x.repeat(m // 6, 1)
        out = run_op("i2", xm.cuda(), w.cuda(), scale.cuda(), n, None, "int8")
        check(out, run_ref("i2", xm, w, scale, n, None, "int8"), "int8", torch.float32, "extreme")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_nonfinite_rows_give_nan_rows(fmt, dtype):
    """act="int8": a row of x holding NaN, +Inf or -Inf gives an all-NaN output row, as in the
    reference, on every path: the fused GEMV (M <= 2; x quantized from registers when aligned,
    in two passes when shifted by one element), the pre-pass with the persistent (M = 2, large
    K) and block GEMV (M = 4) and the tensor-core tiles (M = 16). Other rows stay bit-exact."""
    gen = torch.Generator().manual_seed(11)
    for m, n, k in [(1, 64, 4096), (2, 40, 1024), (2, 40, 20000), (4, 40, 4096), (16, 72, 1024)]:
        _, w, scale = random_weight(fmt, n, k, gen, per_channel=True, scale_offset=0.5)
        for bad in (float("nan"), float("inf"), -float("inf")):
            x = torch.randn(m, k, generator=gen).to(dtype)
            x[0, (7 * torch.arange(5)) % k] = bad
            x[m - 1, k - 1] = bad
            want = run_ref(fmt, x, w, scale, n, None, "int8")
            assert want[0].isnan().all()
            buf = torch.empty(m * k + 1, dtype=dtype, device="cuda")
            shifted = buf[1:].view(m, k)
            shifted.copy_(x)
            for xc in (x.cuda(), shifted):
                got = run_op(fmt, xc, w.cuda(), scale.cuda(), n, None, "int8")
                assert_bit_exact(got.cpu(), want, f"{fmt} {dtype} M={m} K={k} x has {bad}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act", ACTS)
def test_empty_k_gives_bias(fmt, act):
    for m in (1, 2, 4, 16, 40):
        case = make_case(fmt, m, 24, 0, bias=True, dtype=torch.bfloat16).to("cuda")
        got = case.run(act).cpu()
        assert torch.equal(got, case.bias.cpu().expand(m, 24)), f"{fmt} {act} M={m}"


@pytest.mark.parametrize("act,m", [("none", 16), ("none", 100), ("int8", 1), ("int8", 2)])
def test_no_allocation_beyond_the_output(act, m):
    """act="none" past the GEMV with 16-bit x (tensor-core tiles on weights decoded on chip)
    and the fused act="int8" GEMV allocate nothing but the output: no dense copy of the weights,
    no scratch. The one exception: where the Triton GEMM splits K (too few tiles for the SMs),
    its float32 partial sums, at most 8 x M x N of them."""
    gen = torch.Generator().manual_seed(13)
    n, k = 2048, 4096
    _, w, scale = random_weight("i2", n, k, gen, per_channel=True, scale_offset=0.5)
    w, scale = w.cuda(), scale.cuda()
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    ref = run_ref("i2", x, w, scale, n, None, act)
    check(run_op("i2", x, w, scale, n, None, act), ref, act, torch.bfloat16, f"{act} M={m}")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = run_op("i2", x, w, scale, n, None, act)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    allowed = out.numel() * out.element_size()
    if m > 8 and tops.backends()["cuda_mma"] == "triton":  # it may serve any M past the GEMV
        allowed += 8 * out.numel() * 4
    assert extra <= allowed, f"{act} M={m}: {extra} bytes allocated"


def test_bad_input_raises():
    w = torch.zeros(4, 8, dtype=torch.int8)
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises((ValueError, RuntimeError)):
        torch.ops.ternary.linear_i8(x, w, torch.ones(()), None, "int8")  # weight on the CPU
    with pytest.raises((ValueError, RuntimeError)):
        torch.ops.ternary.linear_i8(x, w.cuda(), torch.ones((), device="cuda"), None, "int4")


def _model(fmt, act):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 688), torch.nn.SiLU(),
                                torch.nn.Linear(688, 256), torch.nn.SiLU(),
                                torch.nn.Linear(256, 100))
    tops.convert(model, format=fmt, act=act, exclude=())
    return model.to("cuda", torch.bfloat16)


@pytest.mark.parametrize("fmt,act", [("i2", "int8"), ("i8", "none")])
def test_cuda_graph_capture(fmt, act):
    model = _model(fmt, act)
    assert isinstance(model[0], tops.TernaryLinear)
    for m in (1, 32):
        static_x = torch.randn(m, 256, device="cuda", dtype=torch.bfloat16)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s), torch.no_grad():
            for _ in range(2):
                model(static_x)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_y = model(static_x)
        for _ in range(3):
            x = torch.randn(m, 256, device="cuda", dtype=torch.bfloat16)
            static_x.copy_(x)
            graph.replay()
            with torch.no_grad():
                eager = model(x)
            torch.cuda.synchronize()
            if act == "int8":
                assert torch.equal(static_y, eager)
            else:
                torch.testing.assert_close(static_y, eager, rtol=0, atol=0)


@pytest.mark.parametrize("fmt,act", [("i2", "int8"), ("i8", "none")])
def test_torch_compile(fmt, act):
    model = _model(fmt, act)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for m in (1, 5, 48):
            x = torch.randn(m, 256, device="cuda", dtype=torch.bfloat16)
            eager = model(x)
            got = compiled(x)
            if act == "int8":
                assert torch.equal(got, eager)
            else:
                torch.testing.assert_close(got, eager, rtol=2e-2, atol=2e-2)


def test_decode_attention_skips_cudnn_for_one_token_queries(monkeypatch):
    # cuDNN SDPA builds a plan per new key length and cache address: eager decode must not
    # reach it. Prefill (several queries) keeps PyTorch's own choice.
    pytest.importorskip("transformers")
    from transformers.integrations import sdpa_attention

    from ternary_ops.hf.attention import decode_sdpa

    seen = []
    real = sdpa_attention.sdpa_attention_forward

    def spy(module, q, k, v, mask, **kw):
        seen.append((q.shape[-2], torch.backends.cuda.cudnn_sdp_enabled()))
        return real(module, q, k, v, mask, **kw)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    module = torch.nn.Module()
    module.is_causal = True
    kv = torch.randn(1, 4, 37, 64, device="cuda", dtype=torch.bfloat16)
    for q_len in (1, 5):
        q = torch.randn(1, 4, q_len, 64, device="cuda", dtype=torch.bfloat16)
        out, _ = decode_sdpa(module, q, kv, kv, None)
        want = torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=q_len > 1)
        torch.testing.assert_close(out.transpose(1, 2), want, rtol=2e-2, atol=2e-2)
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    assert seen == [(1, False), (5, enabled)]
    assert torch.backends.cuda.cudnn_sdp_enabled() == enabled  # restored after the call


def test_compiled_decode_attention_uses_grouped_heads():
    # A compiled one-token step over a fixed-length cache with a mask: one SDPA call on the
    # grouped K/V heads (no repeat_kv copies), cuDNN or math, matching transformers' result.
    pytest.importorskip("transformers")
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ternary_ops.hf.attention import decode_sdpa

    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 4
    gen = torch.Generator(device="cuda").manual_seed(7)
    q = torch.randn(2, 20, 1, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(2, 5, 553, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    mask = torch.zeros(2, 1, 1, 553, dtype=torch.bool, device="cuda")
    mask[0, ..., :300] = True
    mask[1, ..., :41] = True
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = lambda *a: decode_sdpa(module, *a, scaling=0.125)[0]  # noqa: E731
    with torch.no_grad():
        want = sdpa_attention_forward(module, q, k, v, mask, scaling=0.125)[0]
        got = torch.compile(step, fullgraph=True, backend=record)(q, k, v, mask)
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
        code = graphs[0].code
        assert "enable_gqa = True" in code and "expand" not in code, code
        compiled = torch.compile(step, fullgraph=True, mode="reduce-overhead")
        for _ in range(3):  # CUDA-graph warm-up, record and replay
            got = compiled(q, k, v, mask).clone()
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_q8_matches_reference(dtype):
    # linear_q8 takes the i8 int8 paths (fused GEMV, GEMV, tensor cores), which accept any int8
    # weight; act="none" the dense path.
    from ternary_ops import reference
    from ternary_ops.formats import Q8_ACT_MAX_K
    for i, (m, n, k) in enumerate([(1, 67, 131), (2, 1000, 2560), (5, 33, 200), (16, 300, 1040),
                                   (100, 70, 77), (1, 1, 1), (3, 5, Q8_ACT_MAX_K)]):
        gen = torch.Generator().manual_seed(i)
        w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
        w[0], w[-1] = 127, -127
        scale = (torch.rand(n, generator=gen) + 0.1) / (127 * k ** 0.5)  # float16 range
        x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
        x[0] = -x[0].abs().amax()
        bias = torch.randn(n, generator=gen).to(dtype) if i % 2 else None
        for act in ("int8", "none"):
            want = reference.linear_q8(x, w, scale, bias, act)
            got = tops.linear_q8(x.cuda(), w.cuda(), scale.cuda(),
                                 None if bias is None else bias.cuda(), act)
            # float32 act="none": cuBLAS and the CPU sum 65536 terms of up to 127 * |x| in
            # different orders
            helpers.check(got, want, act, f"q8 {act} {(m, n, k)}", finite=True, dtype=dtype,
                          rel_tol={**CUDA_REL_TOL, torch.float32: 1e-4})


# ---- act="int8" at M >= 64 through the Triton GEMM (ternary_ops.cuda_mma) ------------------

try:
    import triton  # noqa: F401
    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

# Shapes the router gives the Triton GEMM (M >= 64, csrc/cuda/launchers.cuh): N = 1, K = 1, K
# and N multiples of no tile, K past one and many k-tiles, rows of x past the last full tile.
# i2 with K a multiple of 16 takes the sm_90 kernel on Hopper (K = 20000: a partial last
# k-step), the rest the portable kernel; few tiles split K (64 x 256 x 14336), many do not
# (300 x 4099 x 1024).
TRITON_SHAPES = [(256, 1, 1), (256, 5, 7), (257, 300, 512), (300, 4097, 130), (300, 1000, 4100),
                 (257, 77, 8191), (2048, 512, 256), (64, 40001, 64), (97, 40000, 72),
                 (256, 33, 20000), (64, 256, 14336), (130, 1030, 2048), (300, 4099, 1024)]


def _count_triton_calls(monkeypatch, name="mma_int8", plans=None):
    """A list that grows by M on every call of ternary_ops.cuda_mma's ``name``; ``plans``, a
    list, also gets each call's kernel choice (cuda_mma._plan)."""
    import ternary_ops.cuda_mma as cuda_mma

    calls = []
    real = getattr(cuda_mma, name)

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cuda_mma, name, counted)
    if plans is not None:
        real_plan = cuda_mma._plan

        def plan(*args, **kwargs):
            plans.append(real_plan(*args, **kwargs))
            return plans[-1]

        monkeypatch.setattr(cuda_mma, "_plan", plan)
    return calls


def _check_kernels_taken(plans, fmt):
    """On Hopper, i2 shapes took the sm_90 kernel with and without split-K, and the others the
    portable kernel, also with both."""
    kinds = {(c.kernel, c.split_k > 1) for c in plans}
    want = {("portable", False), ("portable", True)}
    if fmt == "i2" and torch.cuda.get_device_capability()[0] == 9:
        want |= {("wgmma", False), ("wgmma", True)}
    assert want <= kinds, kinds


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
def test_triton_gemm_is_registered():
    assert tops.backends()["cuda_mma"] == "triton"


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
@pytest.mark.parametrize("fmt", ["i2", "i8", "q8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_triton_gemm_matches_reference(fmt, dtype, fresh_seed, monkeypatch):
    from ternary_ops import reference

    plans = []
    calls = _count_triton_calls(monkeypatch, plans=plans)
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (m, n, k) in enumerate(TRITON_SHAPES):
        if fmt == "q8":
            codes = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
            weight = codes
        else:
            codes = helpers.random_codes(n, k, gen)
            weight = helpers.to_format(codes, fmt)
        scale = helpers.random_scale(n, i % 2 == 1, gen, 0.5)
        x = (torch.randn(m, k, generator=gen) * (0.1 + 3 * torch.rand(m, 1, generator=gen)))
        x = x.to(dtype)
        x[m // 2] = 0  # a zero row
        bias = torch.randn(n, generator=gen).to(dtype) if i % 3 == 0 else None
        want = reference.linear_codes(x, codes, scale, bias, "int8",
                                      wmax=127 if fmt == "q8" else 1)
        cuda = [None if t is None else t.cuda() for t in (x, weight, scale, bias)]
        if fmt == "q8":
            got = torch.ops.ternary.linear_q8(*cuda, "int8")
        else:
            got = run_op(fmt, cuda[0], cuda[1], cuda[2], n, cuda[3], "int8")
        assert_bit_exact(got.cpu(), want, f"{fmt} {dtype} M={m} N={n} K={k}")
    assert len(calls) == len(TRITON_SHAPES), calls
    _check_kernels_taken(plans, fmt)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
@pytest.mark.parametrize("fmt", ["i2", "i8", "q8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=dtype_id)
def test_triton_float_gemm_matches_reference(fmt, dtype, fresh_seed, monkeypatch):
    """act="none" from 64 rows on with 16-bit x: weights decoded to x's dtype, float32 sums."""
    from ternary_ops import reference

    plans = []
    calls = _count_triton_calls(monkeypatch, "mma_float", plans)
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (m, n, k) in enumerate(TRITON_SHAPES):
        wmax = 127 if fmt == "q8" else 1
        if fmt == "q8":
            codes = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
            weight = codes
            scale = (torch.rand(n, generator=gen) + 0.1) / (127 * k ** 0.5)  # float16 range
        else:
            codes = helpers.random_codes(n, k, gen)
            weight = helpers.to_format(codes, fmt)
            scale = helpers.random_scale(n, i % 2 == 1, gen, 0.5) / k ** 0.5
        x = torch.randn(m, k, generator=gen).to(dtype)
        bias = torch.randn(n, generator=gen).to(dtype) if i % 3 == 0 else None
        want = reference.linear_codes(x, codes, scale, bias, "none", wmax=wmax)
        cuda = [None if t is None else t.cuda() for t in (x, weight, scale, bias)]
        if fmt == "q8":
            got = torch.ops.ternary.linear_q8(*cuda, "none")
        else:
            got = run_op(fmt, cuda[0], cuda[1], cuda[2], n, cuda[3], "none")
        check(got.cpu(), want, "none", dtype, f"{fmt} {dtype} M={m} N={n} K={k}")
    assert len(calls) == len(TRITON_SHAPES), calls
    _check_kernels_taken(plans, fmt)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
def test_library_gemm_below_64_rows_only_where_it_pays(fresh_seed, monkeypatch):
    """Between the GEMVs and 64 rows the library GEMM serves only i2 weights on sm_90 with K a
    multiple of 16 (act="int8": below 2^18), act="int8" only on large weights (launchers.cuh,
    library_gemm_pays); every call matches the reference either way."""
    from ternary_ops import reference

    hopper = torch.cuda.get_device_capability()[0] == 9
    gen = torch.Generator().manual_seed(fresh_seed)
    cases = [  # fmt, act, M, N, K, served by the library on sm_90
        ("i2", "int8", 16, 8192, 4096, True),  # 2^25 weights from M = 16
        ("i2", "int8", 12, 16384, 8192, True),  # 2^27 below
        ("i2", "int8", 12, 8192, 4096, False),
        ("i2", "int8", 16, 4096, 4096, False),
        ("i2", "int8", 63, 4096, 4096, False),
        ("i2", "int8", 20, 8192, 4100, False),  # K not a multiple of 16
        ("i2", "int8", 20, 8192, 4112, True),  # a multiple of 16, not of the k-step
        ("i2", "int8", 12, 512, 1 << 18, False),  # 2^27 weights, K past the int32 bound
        ("i8", "int8", 20, 8192, 4096, False),
        ("i2", "none", 9, 1030, 1024, True),
        ("i2", "none", 63, 300, 2048, True),
        ("i2", "none", 20, 1030, 1000, False),  # K not a multiple of 16
        ("i2", "none", 20, 1030, 1008, True),
    ]
    calls = {"int8": _count_triton_calls(monkeypatch, "mma_int8"),
             "none": _count_triton_calls(monkeypatch, "mma_float")}
    for fmt, act, m, n, k, served in cases:
        before = len(calls[act])
        codes = helpers.random_codes(n, k, gen)
        weight = helpers.to_format(codes, fmt)
        scale = helpers.random_scale(n, True, gen, 0.5) / k ** 0.5
        x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
        want = reference.linear_codes(x, codes, scale, None, act)
        got = run_op(fmt, x.cuda(), weight.cuda(), scale.cuda(), n, None, act).cpu()
        what = f"{fmt} act={act} M={m} N={n} K={k}"
        if act == "int8":
            assert_bit_exact(got, want, what)
        else:
            check(got, want, act, torch.bfloat16, what)
        assert len(calls[act]) - before == (1 if served and hopper else 0), what


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_library_gemm_launches_reuse_kernels_only_for_the_same_specialization(
        fmt, fresh_seed, monkeypatch):
    """After the first launch of a specialization, cuda_mma's launchers call the compiled kernel
    without the JIT; a call that differs in what the JIT specializes on (a pointer's 16-byte
    alignment, a size's divisibility by 16) takes the JIT again. Every call matches the
    reference, bit for bit (act="int8")."""
    import ternary_ops.cuda_mma as cuda_mma
    from ternary_ops import reference

    jit_calls = []

    class Counted:  # the kernel, counting its launches through the JIT
        def __init__(self, fn):
            self.fn, self.params = fn, fn.params

        def __getitem__(self, grid):
            jit_calls.append(self.fn)
            return self.fn[grid]

    for launcher in (cuda_mma._MMA, cuda_mma._SPLIT_K_SUM, cuda_mma._WGMMA_I2):
        if launcher is not None:
            monkeypatch.setattr(launcher, "fn", Counted(launcher.fn))
            monkeypatch.setattr(launcher, "kernels", {})
    gen = torch.Generator().manual_seed(fresh_seed)
    steps = [  # N, K, scale's offset in floats (1: not 16-byte aligned), JIT launches
        (256, 512, 0, 1), (256, 512, 0, 0), (256, 512, 1, 1), (256, 512, 1, 0), (250, 512, 0, 1),
        (256, 520, 0, 1)]
    for n, k, offset, jit in steps:
        before = len(jit_calls)
        codes = helpers.random_codes(n, k, gen)
        weight = helpers.to_format(codes, fmt)
        scale = (torch.rand(n, generator=gen) + 0.5) / k ** 0.5
        x = torch.randn(64, k, generator=gen).to(torch.bfloat16)
        want = reference.linear_codes(x, codes, scale, None, "int8")
        scale_cuda = helpers.with_offset(scale, offset, "cuda")
        got = run_op(fmt, x.cuda(), weight.cuda(), scale_cuda, n, None, "int8").cpu()
        what = f"{fmt} N={n} K={k} scale offset {offset}"
        assert_bit_exact(got, want, what)
        assert len(jit_calls) - before == jit, what


@pytest.mark.skipif(not HAVE_TRITON or not torch.cuda.is_available()
                    or torch.cuda.get_device_capability()[0] != 9,
                    reason="needs Triton and an sm_90 GPU")
@pytest.mark.parametrize("act,dtype", [("int8", torch.bfloat16), ("int8", torch.float32),
                                       ("none", torch.bfloat16), ("none", torch.float16)],
                         ids=["int8-bf16", "int8-f32", "none-bf16", "none-f16"])
@pytest.mark.parametrize("rows_per_warp", [32, 16])
def test_sm90_kernel_every_tile_matches_reference(act, dtype, rows_per_warp, fresh_seed):
    """Each tile the plan or the sweep can give the sm_90 kernel (x rows 16 to 128, K split or
    not, warp-specialized or not, a ring of 4 or 8 slots; 32 weight rows per warp, 128 on one
    warpgroup, or 16: 128 on two or 64 on one), on shapes whose M, N and N / 4 fill no tile
    (and K, twice, no k-step: TMA's zeros fill the last), against the reference: act="int8"
    bit-exact, act="none" within tolerance."""
    from ternary_ops import cuda_mma, reference

    gen = torch.Generator().manual_seed(fresh_seed)
    int8 = act == "int8"
    bk = 128 if int8 else 64
    for i, (m, n, k) in enumerate([(16, 1030, 1024), (37, 300, 2064), (130, 4099, 512),
                                   (200, 9, 400)]):
        codes = helpers.random_codes(n, k, gen)
        w = helpers.to_format(codes, "i2").cuda()
        scale = helpers.random_scale(n, i % 2 == 0, gen, 0.5) / k ** 0.5
        bias = torch.randn(n, generator=gen) if i % 2 == 1 else None
        x = torch.randn(m, k, generator=gen).to(dtype)
        if int8:
            q, inv = reference.quantize_activations(x)
            a, inv = q.to(torch.int8).cuda(), inv.reshape(-1).cuda()
            qsum = q.to(torch.int32).sum(1, dtype=torch.int32).cuda()
        else:
            a, inv, qsum = x.cuda(), None, None
        want = reference.linear_codes(x, codes, scale, bias, act)
        args = [t if t is None else t.cuda() for t in (scale, bias)]
        if rows_per_warp == 32:  # 128 rows on one warpgroup
            forms = [(128, 4, ws, stages) for ws in (False, True) for stages in (4, 8)]
        else:  # 128 rows on two warpgroups, or 64 on one
            forms = [(bn, bn // 16, ws, stages) for bn in (128, 64)
                     for ws, stages in ((False, 4), (True, 4), (True, 8))]
        for bm, split, (bn, warps, ws, stages) in itertools.product((16, 32, 64, 128), (1, 3),
                                                                    forms):
            config = cuda_mma._Config("wgmma", bm, bn, bk, stages, warps, split, ws)
            out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
            cuda_mma._launch(a, inv, qsum, w, args[0], n, args[1], out, int8, False, config)
            what = f"{config} M={m} N={n} K={k}"
            if int8:
                assert_bit_exact(out.cpu(), want, what)
            else:
                check(out.cpu(), want, act, dtype, what)


@pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")
@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_triton_gemm_serves_the_rms_norm_ops_graphs_and_compile(fmt, monkeypatch):
    from ternary_ops import reference

    calls = _count_triton_calls(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    m, n, k = 300, 1030, 4096  # i2: the sm_90 kernel on Hopper; both split K
    codes = helpers.random_codes(n, k, gen)
    w = helpers.to_format(codes, fmt).cuda()
    scale = helpers.random_scale(n, True, gen, 0.5).cuda()
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    g = (torch.rand(k, generator=gen) + 0.5).to(torch.bfloat16).cuda()
    if fmt == "i2":
        op = lambda x: torch.ops.ternary.rms_norm_linear_i2(x, g, 1e-6, w, scale, n, None)  # noqa: E731
    else:
        op = lambda x: torch.ops.ternary.rms_norm_linear_i8(x, g, 1e-6, w, scale, None)  # noqa: E731
    want = reference.rms_norm_linear_codes(x.cpu(), g.cpu(), 1e-6, codes, scale.cpu(), None)
    assert_bit_exact(op(x).cpu(), want, f"rms_norm_linear_{fmt}")
    # captured in a CUDA graph, then replayed on new inputs
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        op(static_x)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = op(static_x)
    x2 = torch.randn(m, k, generator=gen).to(torch.bfloat16).cuda()
    static_x.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    want2 = reference.rms_norm_linear_codes(x2.cpu(), g.cpu(), 1e-6, codes, scale.cpu(), None)
    assert_bit_exact(static_y.cpu(), want2, f"rms_norm_linear_{fmt} graph replay")
    # under torch.compile(fullgraph=True)
    compiled = torch.compile(op, fullgraph=True)
    assert_bit_exact(compiled(x2).cpu(), want2, f"rms_norm_linear_{fmt} compiled")
    assert len(calls) >= 4, calls


def test_cuda_graph_step_replays_a_compiled_decode_step():
    # A converted Llama's one-token step over a StaticCache, captured once and replayed: each
    # replay gives the logits the same compiled step gives called directly (its own cache), step
    # after step, so the graph carries the cache position and the cache writes along, and the
    # warm-up left the cache as it found it.
    transformers = pytest.importorskip("transformers")
    import ternary_ops.hf as tops_hf

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    tops.convert(model, head="int8", embedding="int8")
    model = model.to("cuda", torch.bfloat16)
    caches = [transformers.StaticCache(config=cfg, max_cache_len=32) for _ in range(2)]
    kws = [tops_hf.cache_kwargs(model, c) for c in caches]
    prompt = torch.randint(3, 256, (1, 6), device="cuda")

    def make_step(kw):
        def step(tok, pos):
            return model(input_ids=tok, position_ids=pos[None], cache_position=pos,
                         use_cache=True, **kw).logits[:, -1]
        return torch.compile(step, fullgraph=True, backend="aot_eager")

    torch._dynamo.reset()
    with torch.inference_mode():
        tok = None
        for kw in kws:
            tok = model(input_ids=prompt, use_cache=True, **kw).logits[:, -1:].argmax(-1)
        pos = torch.tensor([6], device="cuda")
        direct = make_step(kws[0])
        # StaticCache advances its own write position per call: the warm-up must be undone
        replay = tops_hf.cuda_graph_step(make_step(kws[1]), tok, pos,
                                         state=tops_hf.cache_tensors(caches[1]))
        for i in range(8):
            pos = torch.tensor([6 + i], device="cuda")
            want = direct(tok, pos)
            got = replay(tok, pos)
            assert torch.equal(got, want), f"step {i}"
            tok = want.argmax(-1, keepdim=True)
        with pytest.raises(ValueError, match=r"input 0 must match the captured one: expected "
                                             r"\(1, 1\) torch.int64"):
            replay(tok.int(), pos)
    torch._dynamo.reset()
