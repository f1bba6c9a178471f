"""Format q8 (int8 weights in [-127, 127], a scale per row): ``linear_q8`` on every CPU kernel
set against the reference, its checks, opcheck and compile; ``Int8Linear``, ``Int8Embedding``,
``convert(head=, embedding=)`` and saving them."""
import pytest
import torch
from torch import nn

import ternary_ops as tops
from ternary_ops import reference
from ternary_ops.formats import Q8_ACT_MAX_K

from helpers import CPU_TOL, DTYPES, assert_matches, dtype_id, forced_cpu_kernel

CPU_SETS = tops.cpu_kernels_available()
# (M, N, K): decode and prefill shapes off every block (8/4 rows, 16/32/64 columns), the 1x1x1
# corner, and K at the act="int8" limit.
SHAPES = [(1, 67, 131), (5, 33, 200), (2, 9, 17), (1, 1, 1), (3, 1000, 2560), (9, 50, 333),
          (1, 3, Q8_ACT_MAX_K)]


def q8_case(m, n, k, dtype, gen, extremes=True):
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    if extremes:  # every product at its largest in rows 0 and n-1
        w[0], w[-1] = 127, -127
    scale = torch.rand(n, generator=gen) + 0.1
    x = (torch.randn(m, k, generator=gen) * 3).to(dtype)
    if extremes:
        x[0] = -x[0].abs().amax()  # q = -127 in every column
    return x, w, scale


@pytest.mark.parametrize("kernel", CPU_SETS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_q8_matches_reference_on_every_cpu_set(kernel, dtype):
    with forced_cpu_kernel(kernel):
        for i, (m, n, k) in enumerate(SHAPES):
            gen = torch.Generator().manual_seed(1000 * i + k)
            x, w, scale = q8_case(m, n, k, dtype, gen)
            bias = torch.randn(n, generator=gen).to(dtype) if i % 2 else None
            if i % 3 == 2:
                scale = scale[0]  # one scale for the tensor
            for act in ("int8", "none"):
                got = tops.linear_q8(x, w, scale, bias, act)
                want = reference.linear_q8(x, w, scale, bias, act)
                assert got.dtype == dtype and got.shape == (m, n)
                assert_matches(got, want, act, tol=CPU_TOL[dtype] * 10, k=k, gain=3 * 127,
                               what=str((kernel, act, m, n, k)))


def test_q8_integer_dot_is_exact_at_the_limit():
    # K = 65536 with w = +-127 and q = -127 everywhere: |dot| = 127 * 127 * K, computed by the
    # kernels through offset operands that reach 255 * 128 * K.
    k = Q8_ACT_MAX_K
    w = torch.full((4, k), 127, dtype=torch.int8)
    w[1] = -127
    w[2, ::2] = -127
    x = torch.full((1, k), -1.0)
    for kernel in CPU_SETS:
        with forced_cpu_kernel(kernel):
            y = tops.linear_q8(x, w, torch.ones(4), None, "int8")
        # inv = 127, so y = dot / 127 exactly: -127 * K, 127 * K, 0, -127 * K
        assert y.tolist() == [[-127.0 * k, 127.0 * k, 0.0, -127.0 * k]], kernel


def test_q8_bad_input_raises():
    x = torch.randn(2, 16)
    w = torch.zeros(3, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match="weight must be int8 \\(format q8\\)"):
        tops.linear_q8(x, w.to(torch.uint8), torch.ones(3))
    with pytest.raises(ValueError, match="in_features = weight.size\\(1\\) = 16"):
        tops.linear_q8(torch.randn(2, 15), w, torch.ones(3))
    with pytest.raises(ValueError, match="scale must be a scalar or have shape \\[N\\] = \\[3\\]"):
        tops.linear_q8(x, w, torch.ones(2))
    big = torch.zeros(1, Q8_ACT_MAX_K + 1, dtype=torch.int8)
    with pytest.raises(ValueError, match=f"exact for in_features <= {Q8_ACT_MAX_K}"):
        tops.linear_q8(torch.randn(1, Q8_ACT_MAX_K + 1), big, torch.ones(1), None, "int8")
    # act="none" has no such bound
    assert tops.linear_q8(torch.ones(1, Q8_ACT_MAX_K + 1), big, torch.ones(1), None,
                          "none").item() == 0.0


@pytest.mark.parametrize("act", ["int8", "none"])
def test_q8_opcheck_and_compile(act):
    gen = torch.Generator().manual_seed(3)
    x, w, scale = q8_case(4, 19, 33, torch.float32, gen)
    bias = torch.randn(19, generator=gen)
    for args in [(x, w, scale, bias, act), (x.bfloat16().requires_grad_(), w, scale, None, act),
                 (x[:1].reshape(1, 1, 33), w, scale[0], None, act)]:
        torch.library.opcheck(torch.ops.ternary.linear_q8.default, args)
    layer = tops.Int8Linear.from_dense(torch.randn(19, 33, generator=gen), act=act)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


def test_q8_backward_uses_the_dequantized_weight():
    gen = torch.Generator().manual_seed(4)
    x, w, scale = q8_case(3, 7, 11, torch.float32, gen, extremes=False)
    x.requires_grad_()
    tops.linear_q8(x, w, scale, None, "none").sum().backward()
    torch.testing.assert_close(x.grad, (w.float() * scale[:, None]).sum(0).expand(3, 11))


def test_int8_linear_from_linear_and_errors():
    lin = nn.Linear(300, 70)
    layer = tops.Int8Linear.from_linear(lin)
    assert layer.weight.dtype == torch.int8 and layer.weight_scale.shape == (70,)
    assert int(layer.weight.abs().max()) == 127 and int(layer.weight.min()) >= -127
    # per-row absmax: every weight within half a step of the dense one
    err = (layer.dequantize() - lin.weight).abs().max(dim=1).values
    assert bool((err <= layer.weight_scale / 2 + 1e-7).all())
    x = torch.randn(4, 300)
    want = reference.linear_q8(x, layer.weight, layer.weight_scale, lin.bias, "int8")
    torch.testing.assert_close(layer(x), want.detach(), rtol=0, atol=0)
    assert "format=q8" in repr(layer)
    with pytest.raises(ValueError, match="Int8Linear .*x has width 299"):
        layer(torch.randn(2, 299))
    bad = dict(layer.state_dict())
    bad["weight"] = bad["weight"].clone()
    bad["weight"][3, 5] = -128
    with pytest.raises(RuntimeError, match="values of -128"):
        layer.load_state_dict(bad)
    assert int(layer.weight[3, 5]) != -128  # nothing was copied
    layer.half()
    assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.float16
    with pytest.raises(ValueError, match="NaN or Inf"):
        tops.quantize_q8(torch.tensor([[1.0, float("nan")]]))


def test_int8_embedding():
    emb = nn.Embedding(50, 24, padding_idx=0).to(torch.bfloat16)
    q = tops.Int8Embedding.from_embedding(emb)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    got = q(ids)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 3, 24)
    want = (q.weight[ids].float() * q.weight_scale[ids, None]).to(torch.bfloat16)
    assert torch.equal(got, want)
    rel = (got.float() - emb(ids).float()).norm() / emb(ids).float().norm()
    assert rel < 0.01
    q.float()
    assert q(ids).dtype == torch.float32 and q.weight_scale.dtype == torch.float32
    with pytest.raises(ValueError, match="ids must be int64 or int32"):
        q(ids.float())


def tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                                   tie_word_embeddings=seed % 2 == 1)
    return transformers, transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("tied", [False, True])
def test_convert_int8_head_and_embedding_round_trip(tied, tmp_path):
    transformers, model = tiny_llama(seed=int(tied))
    _, ternary_only = tiny_llama(seed=int(tied))
    tops.convert(ternary_only)
    ids = torch.tensor([[1, 5, 7, 9, 11, 200]])
    with torch.no_grad():
        want = ternary_only(ids).logits
    summary = tops.convert(model, head="int8", embedding="int8")
    assert isinstance(model.lm_head, tops.Int8Linear)
    assert isinstance(model.model.embed_tokens, tops.Int8Embedding)
    assert summary.int8 == ["lm_head", "model.embed_tokens"] and "lm_head" in summary.replaced
    assert model.config.tie_word_embeddings is False
    # A tied head and embedding keep one set of int8 rows and scales (quantized from the same
    # weight, row by row, they would be equal anyway); untied ones have their own.
    def shared(m):
        head, emb = m.lm_head, m.model.embed_tokens
        return head.weight is emb.weight and head.weight_scale is emb.weight_scale
    assert shared(model) is tied
    if tied:
        assert summary.notes["lm_head"] == "shares its int8 weight and scales with " \
                                           "'model.embed_tokens'"
        alone = tops.Int8Embedding.from_embedding(ternary_only.model.embed_tokens)
        assert torch.equal(alone.weight, model.model.embed_tokens.weight)
        assert torch.equal(alone.weight_scale, model.model.embed_tokens.weight_scale)
    with torch.no_grad():
        got = model(ids).logits
    # int8 head and embedding: close to the same model with bf16/float ones
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99
    # save / load, plain and Hugging Face folders
    tops.save(model, tmp_path / "m.safetensors")
    fresh = transformers.LlamaForCausalLM(model.config).eval()
    tops.load(tmp_path / "m.safetensors", fresh)
    import ternary_ops.hf as tops_hf
    tops_hf.save_pretrained(model, tmp_path / "hf")
    loaded = tops_hf.load_pretrained(tmp_path / "hf")
    stored = tops.load(tmp_path / "m.safetensors")
    assert (stored["lm_head.weight"] is stored["model.embed_tokens.weight"]) is tied
    for other in (fresh, loaded):
        assert isinstance(other.lm_head, tops.Int8Linear)
        assert isinstance(other.model.embed_tokens, tops.Int8Embedding)
        assert shared(other) is tied
        with torch.no_grad():
            assert torch.equal(other(ids).logits, got)
    bf = tops_hf.load_pretrained(tmp_path / "hf", dtype=torch.bfloat16)
    assert bf.model.embed_tokens.dtype == torch.bfloat16
    assert bf.lm_head.weight_scale.dtype == torch.float32
    # Module.to converts each module's buffers on its own: shared ones must stay shared.
    bf.to(torch.float16)
    assert shared(bf) is tied and bf.lm_head.weight_scale.dtype == torch.float32
    bf.to("meta")
    assert shared(bf) is tied and bf.lm_head.weight.device.type == "meta"


def test_int8_embedding_from_q8_checks_its_tensors():
    codes, scale = tops.quantize_q8(torch.randn(6, 5))
    emb = tops.Int8Embedding.from_q8(codes, scale, padding_idx=1, dtype=torch.float16)
    assert emb.weight is codes and emb.weight_scale is scale and emb.padding_idx == 1
    assert emb(torch.tensor([2])).dtype == torch.float16
    with pytest.raises(ValueError, match="2-D torch.int8 tensor, got torch.float32"):
        tops.Int8Embedding.from_q8(codes.float(), scale)
    with pytest.raises(ValueError, match=r"weight_scale must be float32 \[6\], got "
                                         r"torch.float32 \[5\]"):
        tops.Int8Embedding.from_q8(codes, scale[:5])
    bad = codes.clone()
    bad[2, 3] = -128
    with pytest.raises(ValueError, match="values of -128"):
        tops.Int8Embedding.from_q8(bad, scale)


def test_convert_head_errors():
    with pytest.raises(ValueError, match="head must be 'dense' or 'int8'"):
        tops.convert(nn.Sequential(nn.Linear(4, 4)), head="int4")
    with pytest.raises(ValueError, match="no nn.Linear output head"):
        tops.convert(nn.Sequential(nn.Linear(4, 4)), head="int8")
    with pytest.raises(ValueError, match="get_input_embeddings"):
        tops.convert(nn.Sequential(nn.Linear(4, 4)), embedding="int8")


def test_load_refuses_a_q8_layer_of_another_act(tmp_path):
    model = nn.Sequential(tops.Int8Linear.from_linear(nn.Linear(8, 6)))
    tops.save(model, tmp_path / "q8.safetensors")
    other = nn.Sequential(tops.Int8Linear(8, 6, act="none"))
    with pytest.raises(ValueError, match="format=q8, act=int8 in the file but format=q8, "
                                         "act=none in the model"):
        tops.load(tmp_path / "q8.safetensors", other)
    fresh = nn.Sequential(nn.Linear(8, 6))
    tops.load(tmp_path / "q8.safetensors", fresh)  # a dense layer is rebuilt as the file says
    assert isinstance(fresh[0], tops.Int8Linear)
    assert torch.equal(fresh[0].weight, model[0].weight)
