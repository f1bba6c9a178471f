"""Hugging Face integration: BitNet checkpoints against transformers' own BitLinear layers,
and converted Llama / Qwen2 / GPT-2 models through generate, the KV cache, torch.compile and
a save/load round trip. Everything is built locally from tiny configs (no hub access)."""
import json
import os

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (pip install 'ternary-ops[hf]')")
pytest.importorskip("accelerate", reason="transformers' BitNet loader needs accelerate")

import ternary_ops as tops  # noqa: E402
import ternary_ops.hf as tops_hf  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.integrations.bitnet import pack_weights  # noqa: E402

PROMPT = torch.tensor([[1, 17, 42, 99, 7, 250, 3, 64]])
NEW_TOKENS = 12


def hf_eager():
    """transformers wraps BitLinear's quantization in torch.compile; run it eagerly (same
    arithmetic, no compile time)."""
    return torch._dynamo.config.patch(disable=True)


def greedy(model, ids=PROMPT, **kw):
    with torch.no_grad():
        # min_new_tokens: a random tiny model may pick EOS early; always decode NEW_TOKENS
        return model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=0, **kw)


# ---- BitNet checkpoints ---------------------------------------------------------------------

def bitnet_config(bias=False):
    return transformers.BitNetConfig(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
        attention_bias=bias)


def write_bitnet_checkpoint(path, seed, linear_class="bitlinear", mode="offline",
                            use_rms_norm=False, bias=False, packed=True):
    """A tiny random float32 BitNet model in Hugging Face's checkpoint format, written by
    ``save_random_bitnet`` (transformers' own packer): quantized linear weights
    ``round(W / mean|W|)`` packed uint8 (or dense ternary values), ``weight_scale`` as the
    convention of ``linear_class`` wants (``bitlinear``: 1/mean|W|, divided by;
    ``autobitlinear``: mean|W|, multiplied by); random biases and RMSNorm weights."""
    tops_hf.save_random_bitnet(path, bitnet_config(bias), linear_class=linear_class, seed=seed,
                               dtype=torch.float32, quantization_mode=mode,
                               use_rms_norm=use_rms_norm, rms_norm_eps=1e-5, packed=packed)
    return path


BITNET_VARIANTS = {
    "bitlinear": dict(linear_class="bitlinear"),
    "bitlinear-norm-bias": dict(linear_class="bitlinear", use_rms_norm=True, bias=True),
    "autobitlinear-packed-norm-bias": dict(linear_class="autobitlinear", use_rms_norm=True,
                                           bias=True),
    "autobitlinear-dense": dict(linear_class="autobitlinear", packed=False),
    "autobitlinear-online": dict(linear_class="autobitlinear", mode="online", bias=True),
}


@pytest.fixture(scope="module", params=sorted(BITNET_VARIANTS))
def bitnet(request, tmp_path_factory):
    variant = BITNET_VARIANTS[request.param]
    seed = 1000 + sorted(BITNET_VARIANTS).index(request.param)
    path = write_bitnet_checkpoint(str(tmp_path_factory.mktemp(request.param)), seed, **variant)
    with hf_eager():  # loading AutoBitLinear unpacks through a compiled function too
        reference = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return request.param, path, reference.eval()


def test_bitnet_reference_is_hf_bitlinear(bitnet):
    # Guard: the reference really runs transformers' BitNet layers.
    from transformers.integrations.bitnet import AutoBitLinear, BitLinear
    _, _, ref = bitnet
    layer = ref.model.layers[0].mlp.down_proj
    assert isinstance(layer, (BitLinear, AutoBitLinear))


def test_bitnet_folder_matches_transformers(bitnet):
    name, path, ref = bitnet
    model = tops_hf.from_pretrained_bitnet(path)
    apart = tops_hf.from_pretrained_bitnet(path, fuse=False)
    layers = [m for m in apart.modules() if isinstance(m, tops_hf.BitNetLinear)]
    assert len(layers) == 2 * 7
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(
        model.lm_head, tops.TernaryLinear)
    variant = BITNET_VARIANTS[name]
    assert all((m.rms_norm is not None) == variant.get("use_rms_norm", False) for m in layers)
    # Layers with their own input norm stay apart; the others are fused (q/k/v, gate/up).
    fused = [n for n, _ in model.named_modules() if n.endswith(("qkv_proj", "gate_up_proj"))]
    assert len(fused) == (0 if variant.get("use_rms_norm") else 2 * 2)
    with torch.no_grad(), hf_eager():
        want = ref(PROMPT).logits
    got = model(PROMPT).logits
    with torch.no_grad():
        assert torch.equal(apart(PROMPT).logits, got)
    # Same int8 activations and ternary codes; only the float scaling is rounded differently.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    with hf_eager():
        want_ids = greedy(ref)
    assert torch.equal(greedy(model), want_ids)


def test_bitnet_patch_matches_folder(bitnet, tmp_path):
    name, path, _ = bitnet
    with hf_eager():
        loaded = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf_weight = loaded.model.layers[1].self_attn.o_proj.weight
    patched = tops_hf.from_pretrained_bitnet(loaded)
    assert patched is loaded
    o_proj = patched.model.layers[1].self_attn.o_proj
    assert isinstance(o_proj, tops_hf.BitNetLinear) and o_proj.format == "i2"
    if name.startswith("bitlinear"):  # BitLinear's packed buffer is reused as is
        assert o_proj.weight.data_ptr() == hf_weight.data_ptr()
    folder = tops_hf.from_pretrained_bitnet(path)
    with torch.no_grad():
        assert torch.equal(patched(PROMPT).logits, folder(PROMPT).logits)


def test_bitnet_i8_and_save_load_round_trip(bitnet, tmp_path):
    _, path, _ = bitnet
    i2 = tops_hf.from_pretrained_bitnet(path)
    i8 = tops_hf.from_pretrained_bitnet(path, format="i8")
    assert i8.model.layers[0].mlp.down_proj.weight.dtype == torch.int8
    with torch.no_grad():
        want = i2(PROMPT).logits
        torch.testing.assert_close(i8(PROMPT).logits, want, rtol=0, atol=0)
    tops_hf.save_pretrained(i2, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in config  # our scales multiply; HF must not misread them
    back = tops_hf.load_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(back(PROMPT).logits, want)


def test_bitnet_generate_uses_kv_cache_consistently(bitnet):
    _, path, _ = bitnet
    model = tops_hf.from_pretrained_bitnet(path)
    assert torch.equal(greedy(model), greedy(model, use_cache=False))


def test_bitnet_bfloat16_close_to_transformers(tmp_path):
    # In bf16 transformers quantizes activations in bf16 arithmetic, we in float32 (see the
    # hf module docstring): equal up to bf16 rounding, not bit for bit.
    path = write_bitnet_checkpoint(str(tmp_path), 7, linear_class="bitlinear")
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model = tops_hf.from_pretrained_bitnet(path, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].self_attn.o_proj.weight_scale.dtype == torch.float32
    with torch.no_grad(), hf_eager():
        want = ref(PROMPT).logits
        got = model(PROMPT).logits
    assert got.dtype == torch.bfloat16
    err = (got.float() - want).abs().max() / want.abs().max()
    assert err < 0.05, err


def test_bitnet_scale_conventions_differ(tmp_path):
    # The same file read with the other linear_class must give a different model: proves the
    # convention is honoured, not ignored.
    path = write_bitnet_checkpoint(str(tmp_path), 11, linear_class="bitlinear")
    good = tops_hf.from_pretrained_bitnet(path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["linear_class"] = "autobitlinear"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    wrong = tops_hf.from_pretrained_bitnet(path)
    a = good.model.layers[0].self_attn.o_proj.weight_scale
    b = wrong.model.layers[0].self_attn.o_proj.weight_scale
    torch.testing.assert_close(a * b, torch.ones(()), rtol=1e-6, atol=0)


def test_bitnet_sharded_checkpoint(tmp_path):
    path = write_bitnet_checkpoint(str(tmp_path / "one"), 5)
    from safetensors.torch import load_file
    state = load_file(os.path.join(path, "model.safetensors"))
    shard = tmp_path / "sharded"
    transformers.AutoConfig.from_pretrained(path).save_pretrained(shard)
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}
    for file, ks in halves.items():
        save_file({k: state[k] for k in ks}, shard / file, metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, ks in halves.items() for k in ks}}
    (shard / "model.safetensors.index.json").write_text(json.dumps(index))
    a, b = tops_hf.from_pretrained_bitnet(path), tops_hf.from_pretrained_bitnet(shard)
    with torch.no_grad():
        assert torch.equal(a(PROMPT).logits, b(PROMPT).logits)


def test_bitnet_bad_inputs(tmp_path):
    path = write_bitnet_checkpoint(str(tmp_path / "ok"), 3)
    from safetensors.torch import load_file
    state = load_file(os.path.join(path, "model.safetensors"))
    cfg = transformers.AutoConfig.from_pretrained(path)

    def variant(name, mutate, config=cfg):
        d = tmp_path / name
        config.save_pretrained(d)
        s = dict(state)
        mutate(s)
        save_file(s, d / "model.safetensors")
        return d

    key = "model.layers.0.mlp.up_proj.weight"
    bad_code = variant("code3", lambda s: s.__setitem__(key, s[key] | 0x03))
    with pytest.raises(ValueError, match="invalid codes"):
        tops_hf.from_pretrained_bitnet(bad_code)
    missing = variant("missing", lambda s: s.pop("model.norm.weight"))
    with pytest.raises(ValueError, match="lacks tensors.*model.norm.weight"):
        tops_hf.from_pretrained_bitnet(missing)
    extra = variant("extra", lambda s: s.__setitem__("model.bogus", torch.zeros(2)))
    with pytest.raises(ValueError, match="model.bogus"):
        tops_hf.from_pretrained_bitnet(extra)
    wrong_rows = variant("rows", lambda s: s.__setitem__(key, s[key][:-1].contiguous()))
    with pytest.raises(ValueError, match="rows"):
        tops_hf.from_pretrained_bitnet(wrong_rows)
    dense_cfg = transformers.AutoConfig.from_pretrained(path)
    del dense_cfg.quantization_config
    no_quant = variant("noquant", lambda s: None, config=dense_cfg)
    with pytest.raises(ValueError, match="no bitnet quantization_config"):
        tops_hf.from_pretrained_bitnet(no_quant)
    with pytest.raises(FileNotFoundError):
        tops_hf.from_pretrained_bitnet(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no BitLinear"):
        tops_hf.from_pretrained_bitnet(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="not written by ternary_ops"):
        tops_hf.load_pretrained(path)


def test_make_bitnet_linear_odd_rows_and_dense_checks():
    # out_features not a multiple of 4: HF's packer leaves padding codes at 0 (= -1); we
    # normalise them to the zero code instead of rejecting the file.
    torch.manual_seed(0)
    codes = torch.randint(-1, 2, (7, 5), dtype=torch.int8)
    hf_packed = pack_weights(codes.clone())
    layer = tops_hf.make_bitnet_linear("x", hf_packed, torch.tensor([2.0]), None,
                                       out_features=7)
    assert torch.equal(tops.unpack_i2(layer.weight, 7), codes)
    assert float(layer.weight_scale) == 0.5
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x), tops.reference.linear_codes(x, codes, torch.tensor(0.5),
                                                                     None, "int8"))
    with pytest.raises(ValueError, match="dense ternary"):
        tops_hf.make_bitnet_linear("x", torch.randn(4, 5), torch.ones(1), None,
                                   linear_class="autobitlinear")
    with pytest.raises(ValueError, match="weight_scale must hold"):
        tops_hf.make_bitnet_linear("x", codes.float(), torch.ones(3), None,
                                   linear_class="autobitlinear")
    with pytest.raises(ValueError, match="linear_class"):
        tops_hf.make_bitnet_linear("x", codes.float(), torch.ones(1), None, linear_class="bit")


# ---- any transformers model through tops.convert --------------------------------------------

def tiny_model(arch, seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=256, max_position_embeddings=128, initializer_range=0.2,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common)
        return transformers.LlamaForCausalLM(cfg).eval()
    if arch == "qwen2":  # q/k/v carry biases
        cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, **common)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    common["n_positions"] = common.pop("max_position_embeddings")
    cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, **common)  # Conv1D layers
    return transformers.GPT2LMHeadModel(cfg).eval()


ARCHS = ("llama", "qwen2", "gpt2")


@pytest.fixture(scope="module", params=ARCHS)
def converted(request):
    model = tiny_model(request.param)
    summary = tops.convert(model)
    assert summary.layers_replaced == {"llama": 14, "qwen2": 14, "gpt2": 8}[request.param]
    return request.param, model


def _reference_forward(model):
    """Swaps every TernaryLinear's forward for the plain-torch reference op (with its folded
    RMSNorm, where it has one)."""
    def reference_op(m):
        def forward(x):
            if m.input_norm is not None:
                return tops.reference.rms_norm_linear_i2(
                    x, m.input_norm.weight, m.input_norm.variance_epsilon, m.weight,
                    m.weight_scale, m.out_features, m.bias)
            return tops.reference.linear_i2(x, m.weight, m.weight_scale, m.out_features, m.bias,
                                            m.act)
        return forward

    for m in model.modules():
        if isinstance(m, tops.TernaryLinear):
            m.forward = reference_op(m)


def test_converted_matches_reference_ops(converted):
    arch, model = converted
    ref = tiny_model(arch)
    tops.convert(ref)
    _reference_forward(ref)
    with torch.no_grad():
        torch.testing.assert_close(model(PROMPT).logits, ref(PROMPT).logits, rtol=1e-5, atol=1e-5)


def test_converted_generate_kv_cache(converted):
    _, model = converted
    cached = greedy(model)
    assert cached.shape == (1, PROMPT.shape[1] + NEW_TOKENS)
    assert torch.equal(cached, greedy(model, use_cache=False))
    # batch of two prompts (left padding) decodes row 0 as it decodes alone
    batch = torch.cat([PROMPT, PROMPT.flip(1)])
    assert torch.equal(greedy(model, batch)[0], cached[0])


def test_converted_no_graph_breaks(converted):
    _, model = converted
    torch._dynamo.reset()
    with torch.no_grad():
        explain = torch._dynamo.explain(model)(PROMPT, use_cache=False)
    assert explain.graph_break_count == 0, explain.break_reasons
    assert explain.graph_count == 1


def test_converted_compile_fullgraph_aot(converted):
    _, model = converted
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(PROMPT, use_cache=False).logits,
                           model(PROMPT, use_cache=False).logits)


def test_convert_switches_sdpa_to_decode_safe_attention():
    model, stock = tiny_model("llama", seed=5), tiny_model("llama", seed=5)
    assert model.config._attn_implementation == "sdpa"
    summary = tops.convert(model)
    assert summary.attention == tops_hf.ATTENTION_NAME == model.config._attn_implementation
    assert tops_hf.ATTENTION_NAME in str(summary)
    tops.convert(stock)
    stock.set_attn_implementation("sdpa")  # the documented way back
    assert stock.config._attn_implementation == "sdpa"
    # Off CUDA the function is transformers' SDPA itself: identical logits and tokens.
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, stock(PROMPT).logits)
    assert torch.equal(greedy(model), greedy(stock))
    # Other attention choices are left alone.
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                   num_attention_heads=2, vocab_size=64,
                                   attn_implementation="eager")
    eager = transformers.LlamaForCausalLM(cfg).eval()
    assert tops.convert(eager).attention is None
    assert eager.config._attn_implementation == "eager"


def test_decode_attention_backends(monkeypatch):
    # One-token queries: math on the CPU while compiling (eager unchanged), no cuDNN on CUDA in
    # eager mode (checked on the GPU in test_cuda.py); prefill always PyTorch's own choice.
    from transformers.integrations import sdpa_attention

    from ternary_ops.hf.attention import decode_sdpa

    seen = []
    real = sdpa_attention.sdpa_attention_forward

    def spy(module, q, k, v, mask, **kw):
        seen.append((q.shape[-2], torch.backends.cuda.flash_sdp_enabled(),
                     torch.backends.cuda.math_sdp_enabled()))
        return real(module, q, k, v, mask, **kw)

    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", spy)
    module = torch.nn.Module()
    module.is_causal = True
    kv = torch.randn(1, 4, 37, 16)
    flash = torch.backends.cuda.flash_sdp_enabled()
    for compiling in (False, True):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        for q_len in (1, 5):
            q = torch.randn(1, 4, q_len, 16)
            out, _ = decode_sdpa(module, q, kv, kv, None)
            want = torch.nn.functional.scaled_dot_product_attention(q, kv, kv,
                                                                    is_causal=q_len > 1)
            torch.testing.assert_close(out.transpose(1, 2), want)
    assert seen == [(1, flash, True), (5, flash, True), (1, False, True), (5, flash, True)]
    assert torch.backends.cuda.flash_sdp_enabled() == flash


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_converted_fused_projections_match_separate_layers(arch):
    # convert fuses q/k/v and gate/up by default; logits and generated tokens are those of the
    # separate layers, bit for bit (act="int8"), and the tree names what each slice is.
    model, apart = tiny_model(arch, seed=8), tiny_model(arch, seed=8)
    summary = tops.convert(model)
    tops.convert(apart, fuse=False)
    layers = model.config.num_hidden_layers
    assert len(summary.fused) == 2 * layers and not tops.convert(tiny_model(arch), fuse=False).fused
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.v_proj, tops.FusedSlice) and "of qkv_proj" in repr(attn)
    with torch.no_grad():
        assert torch.equal(model(PROMPT).logits, apart(PROMPT).logits)
    assert torch.equal(greedy(model), greedy(apart))


def test_grouped_decode_attention_matches_transformers():
    # The compiled CUDA decode path's attention, on the CPU: grouped K/V heads with a padding
    # mask give transformers' result (K/V repeated to every head); all-masked-but-one rows too.
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from ternary_ops.hf.attention import _grouped_decode

    module = torch.nn.Module()
    module.is_causal = True
    for hq, hkv, slots in ((8, 2, 37), (4, 4, 1), (6, 1, 19)):
        module.num_key_value_groups = hq // hkv
        q = torch.randn(3, hq, 1, 16)
        k, v = torch.randn(3, hkv, slots, 16), torch.randn(3, hkv, slots, 16)
        mask = torch.rand(3, 1, 1, slots) < 0.6
        mask[..., 0] = True
        want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
        got, none = _grouped_decode(q, k, v, mask, 0.3)
        assert none is None and got.shape == (3, 1, hq, 16) and got.is_contiguous()
        torch.testing.assert_close(got, want)


def test_compiled_generate_static_cache():
    # The decode loop as users compile it: static KV cache, compiled forward, fullgraph.
    model = tiny_model("llama", seed=3)
    tops.convert(model)
    want = greedy(model)
    torch._dynamo.reset()
    eager_forward = model.forward
    model.forward = torch.compile(eager_forward, fullgraph=True, backend="aot_eager")
    try:
        assert torch.equal(greedy(model, cache_implementation="static"), want)
    finally:
        model.forward = eager_forward


def test_compile_inductor_llama():
    model = tiny_model("llama", seed=4)
    tops.convert(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        want = model(PROMPT, use_cache=False).logits
        got = compiled(PROMPT, use_cache=False).logits
    # inductor may fuse the dense parts (norms, rotary) differently: float rounding only
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module_guards", [False, True])
def test_compile_kwargs(module_guards):
    from torch._dynamo.utils import counters

    kw = tops_hf.compile_kwargs("cpu", module_guards=module_guards)
    assert kw["fullgraph"] is True and kw["mode"] is None
    assert ("guard_filter_fn" in (kw["options"] or {})) is not module_guards
    assert tops_hf.compile_kwargs("cuda")["options"]["triton.cudagraphs"] is True
    assert "triton.cudagraphs" not in (tops_hf.compile_kwargs("cuda", cuda_graphs=False)["options"]
                                       or {})
    assert tops_hf.compile_kwargs("cpu") is not tops_hf.compile_kwargs("cpu")  # fresh each call
    model = tiny_model("llama", seed=4)
    tops.convert(model, head="int8", embedding="int8")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, **kw)
    with torch.no_grad():
        torch.testing.assert_close(compiled(PROMPT, use_cache=False).logits,
                                   model(PROMPT, use_cache=False).logits, rtol=1e-4, atol=1e-4)
        graphs = counters["stats"]["unique_graphs"]
        # A change to module state: only the module guards see it (and compile again).
        model.model.norm.variance_epsilon = 0.5
        got = compiled(PROMPT, use_cache=False).logits
        assert (counters["stats"]["unique_graphs"] > graphs) is module_guards
        if module_guards:
            torch.testing.assert_close(got, model(PROMPT, use_cache=False).logits, rtol=1e-4,
                                       atol=1e-4)
    torch._dynamo.reset()


def test_cuda_graph_step_rejects_what_it_cannot_capture():
    # Replays themselves run in tests/test_cuda.py.
    with pytest.raises(ValueError, match="at least one example input"):
        tops_hf.cuda_graph_step(lambda: None)
    with pytest.raises(ValueError, match="example input 0 must be a CUDA tensor, got cpu"):
        tops_hf.cuda_graph_step(lambda a, b: a, torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="warmup must be at least 1"):
        tops_hf.cuda_graph_step(lambda a: a, torch.zeros(1), warmup=0)
    with pytest.raises(ValueError, match="state 0 must be a tensor, got int"):
        tops_hf.cuda_graph_step(lambda a: a, torch.zeros(1), state=[0])
    with pytest.raises(ValueError, match=r"expected a transformers cache .* got dict"):
        tops_hf.cache_tensors({})


def test_cache_tensors_are_what_a_step_changes():
    model = tiny_model("llama", seed=2)
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    with torch.inference_mode():
        model(PROMPT, use_cache=True, **tops_hf.cache_kwargs(model, cache))
        tensors = tops_hf.cache_tensors(cache)
        before = [t.clone() for t in tensors]
        model(PROMPT[:, :1], use_cache=True, **tops_hf.cache_kwargs(model, cache))
    layers = model.config.num_hidden_layers
    assert len(tensors) >= 2 * layers  # keys and values, and any write position
    assert {id(t) for t in tensors} >= {id(x) for layer in cache.layers
                                        for x in (layer.keys, layer.values)}
    changed = [not torch.equal(a, b) for a, b in zip(before, tensors)]
    assert all(changed[i] for i, t in enumerate(tensors) if t.dim() == 4)
    with pytest.raises(ValueError, match="example input 0 must be a CUDA tensor, got int"):
        tops_hf.cuda_graph_step(lambda a: a, 3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_converted_save_load_round_trip(arch, fmt, tmp_path):
    model = tiny_model(arch, seed=9)
    tops.convert(model, format=fmt, exclude=() if arch == "llama" else None)
    tops_hf.save_pretrained(model, tmp_path)
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path))
    back = tops_hf.load_pretrained(tmp_path)
    assert type(back) is type(model)
    names = {n for n, m in model.named_modules() if isinstance(m, tops.TernaryLinear)}
    assert names == {n for n, m in back.named_modules() if isinstance(m, tops.TernaryLinear)}
    assert all(m.format == fmt for m in back.modules() if isinstance(m, tops.TernaryLinear))
    if arch == "gpt2":  # tied embedding survives the round trip as one tensor
        assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()
    with torch.no_grad():
        assert torch.equal(back(PROMPT).logits, model(PROMPT).logits)
    assert torch.equal(greedy(back), greedy(model))


def test_load_pretrained_dtype_and_errors(tmp_path):
    model = tiny_model("qwen2", seed=2)
    tops.convert(model)
    tops_hf.save_pretrained(model, tmp_path / "m")
    half = tops_hf.load_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    attn = half.model.layers[0].self_attn
    assert isinstance(attn.q_proj, tops.FusedSlice) and attn.q_proj.bias.dtype == torch.bfloat16
    assert attn.qkv_proj.weight_scale.dtype == torch.float32
    assert half(PROMPT).logits.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no transformers config"):
        tops_hf.save_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        tops_hf.load_pretrained(tmp_path / "nowhere")
    # a config that does not fit the recorded ternary layers is refused
    good = (tmp_path / "m" / "config.json").read_text()
    cfg = json.loads(good)
    cfg["num_hidden_layers"] = 1
    cfg.pop("layer_types", None)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not exist"):
        tops_hf.load_pretrained(tmp_path / "m")
    cfg = json.loads(good)
    cfg["intermediate_size"] = 128
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="96 -> 64 in the file but 128 -> 64"):
        tops_hf.load_pretrained(tmp_path / "m")


def small_gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_tied_head_is_untied_and_round_trips(tmp_path):
    """convert(exclude=[]) ternarizes GPT-2's lm_head, tied to the input embedding: the head
    gets its own ternary weight, the embedding stays dense, and a reload does not tie them."""
    model = small_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    summary = tops.convert(model, exclude=[])
    assert "lm_head" in summary.replaced and "untied" in summary.notes["lm_head"]
    assert "untied from 'transformer.wte'" in str(summary)
    assert model.config.tie_word_embeddings is False
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        want = model(ids).logits
    tops_hf.save_pretrained(model, tmp_path)
    again = tops_hf.load_pretrained(tmp_path).eval()
    assert isinstance(again.lm_head, tops.TernaryLinear)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)


def test_load_rebuilds_conv1d_layers_of_a_fresh_model(tmp_path):
    model = small_gpt2()
    tops.convert(model)
    path = tmp_path / "gpt2.safetensors"
    tops.save(model, path)
    fresh = small_gpt2()
    tops.load(path, fresh)
    assert isinstance(fresh.transformer.h[0].attn.c_attn, tops.TernaryLinear)
    assert fresh.transformer.h[0].attn.c_attn.layer_name == "transformer.h.0.attn.c_attn"
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, model(ids).logits)


def test_load_into_a_fresh_model_unties_a_ternary_head(tmp_path):
    """A file holding a ternary lm_head, loaded into a fresh GPT-2 (whose head is tied to the
    embedding): the head is replaced and the config untied, so tie_weights() and a
    save_pretrained / load_pretrained round trip keep it ternary."""
    model = small_gpt2()
    tops.convert(model, exclude=[])
    path = tmp_path / "gpt2.safetensors"
    tops.save(model, path)
    fresh = small_gpt2()
    tops.load(path, fresh)
    assert fresh.config.tie_word_embeddings is False
    fresh.tie_weights()
    ids = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        want = model(ids).logits
        assert torch.equal(fresh(ids).logits, want)
    tops_hf.save_pretrained(fresh, tmp_path / "hf")
    again = tops_hf.load_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, want)


def test_save_pretrained_never_saves_a_ternary_head_as_tied(tmp_path):
    model = small_gpt2()
    tops.convert(model, exclude=[])
    model.config.tie_word_embeddings = True  # e.g. a config set by hand after convert
    tops_hf.save_pretrained(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["tie_word_embeddings"] is False
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        assert torch.equal(tops_hf.load_pretrained(tmp_path).eval()(ids).logits,
                           model(ids).logits)


def test_load_pretrained_names_the_file_for_malformed_metadata(tmp_path):
    from safetensors.torch import load_file, save_file
    model = small_gpt2()
    tops.convert(model)
    tops_hf.save_pretrained(model, tmp_path)
    file = tmp_path / tops_hf.CHECKPOINT_NAME
    tensors, meta = load_file(file), tops.io.read_metadata(file)
    for key, raw, match in [
            ("ternary_ops", "[1]", "'ternary_ops' metadata: must be a JSON object, got list"),
            ("ternary_ops", '{"version": 1, "layers": []}', "'layers' must be a JSON object"),
            ("ternary_ops.hf", "[1]", "malformed 'ternary_ops.hf' metadata"),
            ("ternary_ops.hf", '{"rms_norm": {"lm_head": 1}}', "malformed 'ternary_ops.hf'")]:
        save_file(tensors, file, metadata={**meta, key: raw})
        with pytest.raises(ValueError, match=f"{file}: .*{match}"):
            tops_hf.load_pretrained(tmp_path)


def test_save_pretrained_failing_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_gpt2()
    tops.convert(model)
    tops_hf.save_pretrained(model, tmp_path)
    file = tmp_path / tops_hf.CHECKPOINT_NAME
    before = file.read_bytes()

    def half_write(tensors, tmp, metadata):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tops.io, "_save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        tops_hf.save_pretrained(model, tmp_path)
    assert file.read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_cache_kwargs_feed_the_kv_cache():
    """cache_kwargs names the keyword this transformers version's forward takes for a KV cache:
    two cached steps give the logits of one uncached call."""
    model = small_gpt2()
    ids = torch.randint(0, 100, (1, 6))
    cache = transformers.DynamicCache()
    with torch.no_grad():
        model(ids[:, :5], use_cache=True, **tops_hf.cache_kwargs(model, cache))
        step = model(ids[:, 5:], use_cache=True, **tops_hf.cache_kwargs(model, cache)).logits
        full = model(ids, use_cache=False).logits
    torch.testing.assert_close(step[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)
