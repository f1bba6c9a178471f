"""The rms_norm_linear ops: an input RMSNorm folded into act="int8", on every native backend this
machine has (CPU kernel sets always; CUDA when present), bit for bit against the reference."""
import math

import pytest
import torch
from helpers import DTYPES, assert_bit_exact, dtype_id, forced_cpu_kernel, random_codes, \
    random_scale, to_format, with_offset

import ternary_ops as tops
from ternary_ops import reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and tops.backends()["cuda"] else [])

# (M, N, K): K = 1, N = 1, odd sizes, the CUDA GEMV (M <= 8) and tensor-core (M > 8) paths.
SHAPES = [(1, 1, 1), (1, 7, 1), (1, 1, 33), (1, 5, 2560), (2, 13, 130), (3, 17, 257),
          (5, 64, 1000), (9, 33, 96), (17, 9, 4099), (40, 70, 640)]


def _op(fmt):
    return tops.rms_norm_linear_i2 if fmt == "i2" else tops.rms_norm_linear_i8


def _case(fmt, m, n, k, dtype, *, norm_dtype=None, bias=True, per_channel=True):
    x = (torch.randn(m, k) * 4).to(dtype)
    g = (torch.rand(k) * 2 - 0.5).to(norm_dtype or dtype)
    codes = random_codes(n, k)
    w = to_format(codes, fmt)
    scale = random_scale(n, per_channel)
    b = torch.randn(n) if bias else None
    return x, g, w, scale, n, b


def _call(fmt, x, g, eps, w, scale, n, b):
    if fmt == "i2":
        return tops.rms_norm_linear_i2(x, g, eps, w, scale, n, b)
    return tops.rms_norm_linear_i8(x, g, eps, w, scale, b)


def _ref(fmt, x, g, eps, w, scale, n, b):
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    if fmt == "i2":
        return reference.rms_norm_linear_i2(cpu(x), cpu(g), eps, cpu(w), cpu(scale), n, cpu(b))
    return reference.rms_norm_linear_i8(cpu(x), cpu(g), eps, cpu(w), cpu(scale), cpu(b))


def _on(device, *ts):
    return [None if t is None else t.to(device) for t in ts]


def _check_all_sets(device, fmt, args, what):
    """args on the CPU; runs on `device` (every CPU kernel set on the CPU) and compares."""
    want = _ref(fmt, *args)
    x, g, eps, w, scale, n, b = args
    x, g, w, scale, b = _on(device, x, g, w, scale, b)
    sets = tops.cpu_kernels_available() if device == "cpu" else [None]
    for name in sets:
        if name is None:
            got = _call(fmt, x, g, eps, w, scale, n, b)
        else:
            with forced_cpu_kernel(name):
                got = _call(fmt, x, g, eps, w, scale, n, b)
        assert_bit_exact(got.cpu(), want, f"{what} on {name or device}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_matches_reference(device, fmt, dtype):
    for i, (m, n, k) in enumerate(SHAPES):
        norm_dtype = (torch.float32, dtype, torch.float64)[i % 3]
        eps = (1e-6, 1e-5, 0.5, 1e-40)[i % 4]
        args = _case(fmt, m, n, k, dtype, norm_dtype=norm_dtype, bias=i % 2 == 0,
                     per_channel=i % 3 != 1)
        x, g, w, scale, n, b = args
        _check_all_sets(device, fmt, (x, g, eps, w, scale, n, b),
                        f"{fmt} {dtype_id(dtype)} M={m} N={n} K={k} eps={eps}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_unaligned_rows_and_norm_weight_match_reference(device, dtype):
    """Several rows of x and the norm weight, each one element past an aligned start on the
    device (no vector loads), also with K a multiple of 4; K past two steps of the CUDA
    pre-pass's block."""
    for m, n, k in ((12, 40, 4098), (10, 24, 8195), (3, 9, 132), (17, 33, 4096)):
        x, g, w, scale, n, b = _case("i2", m, n, k, dtype)
        want = _ref("i2", x, g, 1e-6, w, scale, n, b)
        got = _call("i2", with_offset(x, 1, device), with_offset(g, 1, device), 1e-6,
                    *_on(device, w, scale), n, _on(device, b)[0])
        assert_bit_exact(got.cpu(), want, f"{dtype_id(dtype)} M={m} N={n} K={k} on {device}")


# One-row (decode) shapes with norm_weight in x's dtype, which the CUDA GEMV normalises and
# quantizes in its own prologue: K = 1 and K not a multiple of 8 (no vector loads), x held in
# registers at 2, 4, 8 and 16 groups per thread (2560, 6912, 14336, 20000 / 32768 for 16-bit x),
# and two passes over x (N = 1 at K = 32768: one small block).
DECODE_SHAPES = [(3, 1), (9, 130), (64, 2560), (33, 6912), (40, 14336), (20, 20000), (1, 32768),
                 (300, 32768)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_decode_rows_match_reference(device, fmt, dtype):
    for i, (n, k) in enumerate(DECODE_SHAPES):
        eps = (1e-6, 1e-5, 0.5)[i % 3]
        x, g, w, scale, n, b = _case(fmt, 1, n, k, dtype, bias=i % 2 == 0,
                                     per_channel=i % 3 != 1)
        _check_all_sets(device, fmt, (x, g, eps, w, scale, n, b),
                        f"{fmt} {dtype_id(dtype)} M=1 N={n} K={k}")
    # x not 16-byte aligned and not 4-element aligned, on the device (one element in; K odd)
    x, g, w, scale, n, b = _case(fmt, 1, 70, 2561, dtype)
    _check_all_sets(device, fmt, (with_offset(x, 1, device), g, 1e-6, w, scale, n, b),
                    "unaligned row")
    # One row each: zeros (eps = 0 too: 0 / 0), tiny, huge, a spike, NaN / +-Inf, NaN in g.
    k = 2560
    big = 1e30 if dtype != torch.float16 else 6e4
    tiny = 1e-35 if dtype != torch.float16 else 6e-8
    x, g, w, scale, n, b = _case(fmt, 1, 50, k, dtype)
    rows = [torch.zeros(k), torch.randn(k) * tiny, torch.randn(k) * big / 8,
            torch.zeros(k).index_fill_(0, torch.tensor([17]), 3.0)]
    for j, row in enumerate(rows):
        for eps in (1e-6, 0.0):
            _check_all_sets(device, fmt, (row.to(dtype)[None], g, eps, w, scale, n, b),
                            f"extreme row {j} eps={eps}")
    for bad in (float("nan"), float("inf"), float("-inf")):
        row = torch.randn(1, k).to(dtype)
        row[0, 1000] = bad
        got = _call(fmt, *_on(device, row, g), 1e-6, *_on(device, w, scale), n,
                    _on(device, b)[0]).cpu()
        assert got.isnan().all(), f"x holding {bad} gives a NaN row"
    g_bad = g.clone()
    g_bad[2559] = float("nan")
    got = _call(fmt, *_on(device, x, g_bad), 1e-6, *_on(device, w, scale), n,
                _on(device, b)[0]).cpu()
    assert got.isnan().all(), "a NaN in norm_weight gives a NaN row"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_leading_dims_and_strided_x(device, dtype):
    x, g, w, scale, n, b = _case("i2", 6, 19, 300, dtype)
    x3 = x.reshape(2, 3, 300)
    _check_all_sets(device, "i2", (x3, g, 1e-6, w, scale, n, b), "3-d x")
    wide = torch.randn(6, 600).to(dtype)[:, ::2]  # K stride 2: the glue copies it
    _check_all_sets(device, "i2", (wide, g, 1e-6, w, scale, n, b), "strided x")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_extreme_rows(device, fmt, dtype):
    """Zero rows, rows of tiny and of huge values, a single spike, eps = 0 (a zero row is then
    0 / 0: NaN, as in the reference), and NaN / +-Inf in x or in norm_weight."""
    m, n, k = 9, 11, 200
    x, g, w, scale, n, b = _case(fmt, m, n, k, dtype)
    big = 1e30 if dtype != torch.float16 else 6e4
    tiny = 1e-35 if dtype != torch.float16 else 6e-8
    x[0] = 0
    x[1] = (torch.randn(k) * tiny).to(dtype)
    x[2] = (torch.randn(k) * big / 8).to(dtype)
    x[3] = 0
    x[3, 17] = 3
    x[4, 5] = float("nan")
    x[5, 9] = float("inf")
    x[6, 0] = float("-inf")
    for eps in (1e-6, 0.0):
        _check_all_sets(device, fmt, (x, g, eps, w, scale, n, b), f"extremes eps={eps}")
    out = _call(fmt, *_on(device, x, g), 1e-6, *_on(device, w, scale), n, b if b is None
                else b.to(device)).cpu()
    assert out[4:7].isnan().all() and not out[7:].isnan().any()
    g_bad = g.clone()
    g_bad[3] = float("nan")
    got = _call(fmt, *_on(device, x[7:], g_bad), 1e-6, *_on(device, w, scale), n,
                None if b is None else b.to(device)).cpu()
    assert got.isnan().all(), "a NaN in norm_weight makes every row NaN"


@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_close_to_rmsnorm_then_linear(fmt):
    """The folded norm computes RMSNorm then the plain op, up to float rounding: the normalised
    activations are not rounded to x's dtype first, and 1 / rms scales the output instead."""
    x, g, w, scale, n, b = _case(fmt, 4, 96, 2560, torch.float32)
    eps = 1e-6
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g
    plain = (reference.linear_i2(normed, w, scale, n, b) if fmt == "i2"
             else reference.linear_i8(normed, w, scale, b))
    got = _call(fmt, x, g, eps, w, scale, n, b)
    # The int8 codes agree except where z * inv and normed * inv' fall on either side of a
    # rounding boundary (then by one), and the scales to float32 rounding.
    q, inv = reference.rms_norm_quantize(x, g, eps)
    q_plain, inv_plain = reference.quantize_activations(normed)
    flips = (q.int() - q_plain.int()).abs()
    assert flips.max() <= 1 and flips.sum() <= q.numel() // 200, flips.sum()
    torch.testing.assert_close(inv, inv_plain, rtol=1e-5, atol=0)
    err = ((got - plain).norm() / plain.norm()).item()
    assert err < 1e-5 + 1e-3 * flips.sum().item(), (err, flips.sum())
    x16 = x.bfloat16()
    normed16 = (x16.float() * torch.rsqrt(x16.float().pow(2).mean(-1, keepdim=True) + eps)
                ).bfloat16() * g.bfloat16()
    plain16 = (reference.linear_i2(normed16, w, scale, n, b) if fmt == "i2"
               else reference.linear_i8(normed16, w, scale, b))
    got16 = _call(fmt, x16, g.bfloat16(), eps, w, scale, n, b)
    err16 = ((got16.float() - plain16.float()).norm() / plain16.float().norm()).item()
    assert err16 < 2e-2, err16


def test_rms_norm_factor_is_the_root_mean_square():
    x = torch.randn(5, 3000) * torch.logspace(-15, 15, 5)[:, None]  # mean squares in float32
    got = reference.rms_norm_factor(x, 1e-6)
    want = (x.double().pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=0)


def test_empty_k_gives_bias():
    x = torch.randn(3, 0)
    w = tops.pack_i2(random_codes(5, 0))
    b = torch.randn(5)
    out = tops.rms_norm_linear_i2(x, torch.ones(0), 1e-6, w, torch.tensor(1.0), 5, b)
    assert torch.equal(out, b.expand(3, 5))


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_raises(device):
    x, g, w, scale, n, b = _case("i2", 2, 8, 64, torch.float32)
    x, g, w, scale, b = _on(device, x, g, w, scale, b)
    op = "ternary.rms_norm_linear_i2"
    with pytest.raises(ValueError, match=rf"{op}: norm_weight must have shape \[in_features\] "
                                         r"= \[64\], got \[63\]"):
        tops.rms_norm_linear_i2(x, g[:63], 1e-6, w, scale, n, b)
    with pytest.raises(ValueError, match=rf"{op}: norm_weight must be a floating tensor"):
        tops.rms_norm_linear_i2(x, g.to(torch.int32), 1e-6, w, scale, n, b)
    for eps in (-1e-6, math.nan, math.inf):
        with pytest.raises(ValueError, match=rf"{op}: eps must be finite and >= 0"):
            tops.rms_norm_linear_i2(x, g, eps, w, scale, n, b)
    with pytest.raises(ValueError, match=r"ternary.rms_norm_linear_i8: x must have shape"):
        tops.rms_norm_linear_i8(x[:, :60], g[:60], 1e-6, torch.zeros(8, 64, dtype=torch.int8,
                                                                     device=device), scale, b)


@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_opcheck(fmt):
    x, g, w, scale, n, b = _case(fmt, 3, 10, 48, torch.bfloat16)
    if fmt == "i2":
        op, args = torch.ops.ternary.rms_norm_linear_i2.default, (x, g, 1e-6, w, scale, n, b)
    else:
        op, args = torch.ops.ternary.rms_norm_linear_i8.default, (x, g, 1e-6, w, scale, b)
    torch.library.opcheck(op, args)
    x.requires_grad_(True)
    g.requires_grad_(True)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration",
                                                "test_faketensor"))


def test_compiles_fullgraph():
    x, g, w, scale, n, b = _case("i2", 2, 24, 64, torch.float32)

    def f(x):
        return tops.rms_norm_linear_i2(x + 1, g, 1e-6, w, scale, n, b) * 2

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    assert_bit_exact(compiled(x), f(x), "compiled")


def test_gradients_follow_the_straight_through_estimator():
    """d/dx and d/d(norm_weight) are those of RMSNorm(x) * g then the dense layer s * T (the
    quantization counted as identity); d/d(bias) sums the output gradient."""
    x, g, w, scale, n, b = _case("i2", 3, 12, 40, torch.float32)
    x.requires_grad_(True)
    g.requires_grad_(True)
    b.requires_grad_(True)
    y = tops.rms_norm_linear_i2(x, g, 1e-6, w, scale, n, b)
    grad = torch.randn_like(y)
    gx, gg, gb = torch.autograd.grad(y, (x, g, b), grad)
    x2, g2 = x.detach().requires_grad_(True), g.detach().requires_grad_(True)
    dense = tops.unpack_i2(w, n).float() * scale[:, None]
    y2 = (x2 * torch.rsqrt(x2.pow(2).mean(-1, keepdim=True) + 1e-6) * g2) @ dense.T
    wx, wg = torch.autograd.grad(y2, (x2, g2), grad)
    torch.testing.assert_close(gx, wx)
    torch.testing.assert_close(gg, wg)
    torch.testing.assert_close(gb, grad.sum(0))


# ---- folded norms in models (ternary_ops.fuse.fold_norms, convert(fold_norms=True)) ----------

transformers = pytest.importorskip("transformers")


def _tiny(arch, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=128, max_position_embeddings=64, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    cfg = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "bitnet": transformers.BitNetConfig}[arch](**common)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "bitnet": transformers.BitNetForCausalLM}[arch]
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)  # not all ones, so a lost norm weight shows
    return model


PROMPT = torch.tensor([[1, 17, 42, 99, 7, 50, 3, 64]])
FOLDED = {"llama": 4, "qwen2": 4, "bitnet": 8}


@pytest.mark.parametrize("arch", sorted(FOLDED))
def test_convert_folds_the_decoder_norms(arch):
    from ternary_ops.fuse import FoldedRMSNorm
    model, plain = _tiny(arch), _tiny(arch)
    summary = tops.convert(model)
    tops.convert(plain, fold_norms=False)
    assert len(summary.folded) == FOLDED[arch] and "folded" in str(summary)
    layer = model.model.layers[0]
    assert isinstance(layer.input_layernorm, FoldedRMSNorm)
    assert layer.self_attn.qkv_proj.input_norm is layer.input_layernorm
    assert not isinstance(model.model.norm, FoldedRMSNorm)  # the final norm feeds the head
    assert model.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        got, want = model(PROMPT).logits, plain(PROMPT).logits
    # Equal up to where a value rounds: an int8 code may flip where RMSNorm's output, rounded
    # on its own, lands at a rounding boundary.
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-2, err
    # Without fused projections the norm goes to each member.
    unfused = _tiny(arch)
    tops.convert(unfused, fuse=False)
    q = unfused.model.layers[1].self_attn.q_proj
    assert q.input_norm is unfused.model.layers[1].self_attn.k_proj.input_norm is not None
    with torch.no_grad():
        assert_bit_exact(unfused(PROMPT).logits, got, "fused vs unfused projections")


def test_folded_model_matches_the_reference_ops_and_compiles():
    model = _tiny("bitnet")
    tops.convert(model)
    with torch.no_grad():
        eager = model(PROMPT).logits
        ref = _tiny("bitnet")
        tops.convert(ref)
        for m in ref.modules():
            if isinstance(m, tops.TernaryLinear) and m.input_norm is not None:
                m.forward = (lambda m: lambda x: reference.rms_norm_linear_i2(
                    x, m.input_norm.weight, m.input_norm.variance_epsilon, m.weight,
                    m.weight_scale, m.out_features, m.bias))(m)
        assert_bit_exact(ref(PROMPT).logits, eager, "reference ops")
        compiled = torch.compile(model, fullgraph=True, backend="inductor")
        torch.testing.assert_close(compiled(PROMPT).logits, eager, rtol=1e-5, atol=1e-5)


def test_folded_norms_save_and_load(tmp_path):
    import ternary_ops.hf as tops_hf
    from ternary_ops.fuse import FoldedRMSNorm
    model = _tiny("bitnet")
    tops.convert(model)
    with torch.no_grad():
        want = model(PROMPT).logits
    tops.save(model, tmp_path / "m.safetensors")
    fresh = tops.load(tmp_path / "m.safetensors", _tiny("bitnet", seed=1))
    assert isinstance(fresh.model.layers[1].mlp.ffn_sub_norm, FoldedRMSNorm)
    tops_hf.save_pretrained(model, tmp_path / "hf")
    again = tops_hf.load_pretrained(tmp_path / "hf")
    assert again.model.layers[0].self_attn.o_proj.input_norm.norm_name == \
        "model.layers.0.self_attn.attn_sub_norm"
    with torch.no_grad():
        assert_bit_exact(fresh(PROMPT).logits, want, "tops.load")
        assert_bit_exact(again(PROMPT).logits, want, "hf.load_pretrained")
    tops.load(tmp_path / "m.safetensors", fresh)  # loading into the folded model again


def test_fold_norms_leaves_what_it_cannot_prove():
    from ternary_ops.fuse import fold_norm, fold_norms
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).eval()
    assert tops.convert(gpt2).folded == {}  # a model type whose layout is not known
    none = _tiny("llama")
    assert tops.convert(none, act="none").folded == {}  # act="none" layers keep the norm
    model = _tiny("llama")
    tops.convert(model, fold_norms=False)
    assert fold_norms(model) and fold_norms(model) == {}  # nothing left to fold
    other = _tiny("llama")
    tops.convert(other, fold_norms=False)
    with pytest.raises(ValueError, match=r"cannot fold 'model.norm': its weight is not a \[96\]"):
        fold_norm(other, "model.norm", ["model.layers.0.mlp.down_proj"])
    with pytest.raises(ValueError, match="must be act='int8' TernaryLinear layers"):
        fold_norm(other, "model.norm", ["lm_head"])
    with pytest.raises(ValueError, match="'model.layers.0.mlp.nope', which is not in the model"):
        fold_norm(other, "model.layers.0.post_attention_layernorm", ["model.layers.0.mlp.nope"])


def test_devices_without_a_native_kernel_use_the_norms_own_arithmetic(monkeypatch):
    """Where the rms_norm_linear ops have no native kernel (MPS), a folded layer normalises as
    the norm it replaced did, then runs the plain op: the unfolded model, bit for bit."""
    import ternary_ops.nn as tnn
    model, plain = _tiny("llama"), _tiny("llama")
    tops.convert(model)
    tops.convert(plain, fold_norms=False)
    monkeypatch.setattr(tnn, "_FOLDED_NORM_DEVICES", ())
    with torch.no_grad():
        assert_bit_exact(model(PROMPT).logits, plain(PROMPT).logits, "norm's own arithmetic")
