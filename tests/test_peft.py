"""LoRA adapters on frozen ternary layers with PEFT (ternary_ops.lora): the forward is the base's
ternary op plus the adapter term, training moves only the adapters, adapters save and load,
and merging into ternary weights is refused."""
import warnings

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import ternary_ops as tops  # noqa: E402
import ternary_ops.lora as tlora  # noqa: E402
from ternary_ops.fuse import llama_rms_norm  # noqa: E402

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict  # noqa: E402

# PEFT calls a transformers method that transformers 5 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llm(arch="llama", seed=0, **convert_kwargs):
    """A converted 2-layer decoder (hidden 64); q/k/v and gate/up fused, norms folded unless
    ``convert_kwargs`` say otherwise. Qwen2's q/k/v carry biases."""
    torch.manual_seed(seed)
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                  max_position_embeddings=64)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    tops.convert(model.eval(), calibration=False, **convert_kwargs)
    return model


def batch(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, 12), generator=gen)


def randomize_adapters(model, seed=2):
    """LoRA's B starts at zero (the adapter adds nothing); give every adapter weight values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def frozen_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_training_step_moves_only_the_adapters():
    model = tiny_llm()
    model.config.use_cache = False
    pm = get_peft_model(model, tlora.lora_config(r=4, lora_alpha=8, target_modules=TARGETS))
    before = frozen_state(pm)
    packed = [m.weight for m in pm.modules() if isinstance(m, tops.TernaryLinear)]
    assert packed and all(not w.is_floating_point() and not w.requires_grad for w in packed)
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # every target got an adapter, fused slices (q/k/v, gate/up) and plain layers alike
    wrapped = [m for m in pm.modules() if isinstance(m, tlora.TernaryLoraLinear)]
    assert len(wrapped) == 2 * len(TARGETS)
    assert sum(isinstance(m.base_layer, tops.FusedSlice) for m in wrapped) == 2 * 5

    opt = torch.optim.Adam([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    ids, losses = batch(), []
    pm.train()
    for _ in range(8):
        loss = pm(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        got_grad = {n for n, p in pm.named_parameters() if p.grad is not None}
        assert got_grad == trainable
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    after = frozen_state(pm)
    assert before.keys() == after.keys()
    for key in before:  # the ternary base, norms, embeddings and head: bit for bit
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key


def test_disable_adapter_gives_the_base_output_exactly():
    model, ids = tiny_llm(), batch()
    base = logits(model, ids)
    pm = get_peft_model(model, tlora.lora_config(r=4, target_modules=TARGETS))
    assert torch.equal(logits(pm, ids), base)  # B = 0: the adapter adds exactly nothing
    randomize_adapters(pm)
    assert not torch.allclose(logits(pm, ids), base)
    with pm.disable_adapter():
        assert torch.equal(logits(pm, ids), base)


def test_adapter_save_load_round_trip(tmp_path):
    pm, ids = get_peft_model(tiny_llm(), tlora.lora_config(r=4, target_modules=TARGETS)), batch()
    randomize_adapters(pm)
    want = logits(pm, ids)
    pm.save_pretrained(tmp_path)
    # with the config registered by hand (PEFT's documented way for custom layers)
    config = tlora.register(LoraConfig.from_pretrained(tmp_path))
    loaded = PeftModel.from_pretrained(tiny_llm(), tmp_path, config=config)
    assert torch.equal(logits(loaded, ids), want)
    # with every LoraConfig taking ternary layers: the plain call
    tlora.register_with_peft()
    tlora.register_with_peft()  # idempotent
    loaded = PeftModel.from_pretrained(tiny_llm(), tmp_path)
    assert torch.equal(logits(loaded, ids), want)
    # the state-dict functions
    other = get_peft_model(tiny_llm(), LoraConfig(r=4, target_modules=TARGETS))
    result = set_peft_model_state_dict(other, get_peft_model_state_dict(pm))
    assert not result.unexpected_keys
    assert torch.equal(logits(other, ids), want)


def test_adapter_keys_do_not_depend_on_fusing_or_folding(tmp_path):
    """An adapter names the model's own layers (q_proj, not qkv_proj), and sees the normalised
    input where a norm is folded: it means the same on a fused, folded or plain model."""
    fused = get_peft_model(tiny_llm(), tlora.lora_config(r=4, target_modules=TARGETS))
    randomize_adapters(fused)
    fused.save_pretrained(tmp_path)
    config = tlora.register(LoraConfig.from_pretrained(tmp_path))
    plain = PeftModel.from_pretrained(tiny_llm(fuse=False, fold_norms=False), tmp_path,
                                      config=config)
    ids = batch()
    torch.testing.assert_close(logits(plain, ids), logits(fused, ids), rtol=0.02, atol=0.02)
    unfused = PeftModel.from_pretrained(tiny_llm(fuse=False), tmp_path,
                                        config=tlora.register(LoraConfig.from_pretrained(tmp_path)))
    assert torch.equal(logits(unfused, ids), logits(fused, ids))  # fused rows are bit-exact


def test_merge_is_refused_with_the_reason():
    pm, ids = get_peft_model(tiny_llm(), tlora.lora_config(r=4, target_modules=TARGETS)), batch()
    randomize_adapters(pm)
    want = logits(pm, ids)
    for merge in (pm.merge_and_unload, pm.merge_adapter,
                  pm.base_model.model.model.layers[0].self_attn.o_proj.merge):
        with pytest.raises(ValueError, match=r"not ternary.*Keep the adapter unmerged"):
            merge()
    assert torch.equal(logits(pm, ids), want)  # nothing was merged
    base = pm.unload()  # removing the adapters without merging works
    assert not any(isinstance(m, tlora.TernaryLoraLinear) for m in base.modules())


def _wrapped(layer, **config):
    """``layer`` as the child ``proj`` of a module, with a LoRA adapter whose B is random."""
    model = nn.Module()
    model.proj = layer
    model.norm = nn.LayerNorm(4)  # PEFT reads the model's device from its first parameter
    config = dict(dict(r=3, lora_alpha=6, target_modules=["proj"], lora_dropout=0.0), **config)
    pm = get_peft_model(model, tlora.lora_config(**config))
    randomize_adapters(pm)
    return pm.base_model.model.proj


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("act", ["none", "int8"])
def test_lora_output_is_base_plus_the_lora_term(act, bias):
    dense = nn.Linear(40, 24, bias=bias)
    wrapper = _wrapped(tops.TernaryLinear.from_linear(dense, act=act))
    x = torch.randn(5, 40)
    a, b = wrapper.lora_A["default"].weight, wrapper.lora_B["default"].weight
    with torch.no_grad():
        want = wrapper.base_layer(x) + (x @ a.t() @ b.t()) * 2.0
        torch.testing.assert_close(wrapper(x), want, rtol=1e-6, atol=1e-6)
        if act == "none":  # the dense weight with the adapter added computes the same
            dense_out = nn.functional.linear(x, wrapper.merged_dense_weight(),
                                             wrapper.base_layer.bias)
            torch.testing.assert_close(wrapper(x), dense_out, rtol=1e-5, atol=1e-5)


def test_lora_on_a_fused_slice_with_a_folded_norm():
    pm = get_peft_model(tiny_llm("qwen2"), tlora.lora_config(r=4, target_modules=["q_proj"]))
    randomize_adapters(pm)
    attn = pm.base_model.model.model.layers[0].self_attn
    q = attn.q_proj
    assert isinstance(q.base_layer, tops.FusedSlice) and q.base_layer.bias is not None
    norm = q.base_layer.fused.input_norm
    assert norm is not None
    x = torch.randn(3, 64)
    a, b = q.lora_A["default"].weight, q.lora_B["default"].weight
    with torch.no_grad():
        h = llama_rms_norm(x, norm.weight, norm.variance_epsilon)
        torch.testing.assert_close(q(x), q.base_layer(x) + h @ a.t() @ b.t() * q.scaling["default"],
                                   rtol=1e-6, atol=1e-6)
        assert torch.equal(attn.k_proj(x), attn.qkv_proj(x)[:, 64:96])  # k has no adapter
    y = pm(input_ids=batch(), labels=batch()).loss
    y.backward()
    assert q.lora_B["default"].weight.grad is not None


def test_dropout_and_mixed_adapter_batches():
    layer = tops.TernaryLinear.from_linear(nn.Linear(32, 16), act="int8")
    wrapper = _wrapped(layer, lora_dropout=0.5).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        base = wrapper.base_layer(x)
        full = wrapper(x)  # eval: no dropout
        assert torch.equal(wrapper(x), full)
        mixed = wrapper(x, adapter_names=["default", "__base__", "default", "__base__"])
        torch.testing.assert_close(mixed[0::2], full[0::2], rtol=1e-6, atol=1e-6)
        assert torch.equal(mixed[1::2], base[1::2])
    wrapper.train()
    out = wrapper(x)
    assert not torch.allclose(out, full)  # dropout on the adapter's input
    out.sum().backward()
    assert wrapper.lora_A["default"].weight.grad is not None


def test_unsupported_targets_and_variants_say_why():
    model = tiny_llm()
    with pytest.raises(ValueError, match="qkv_proj' is the fused layer of q_proj, k_proj, v_proj"):
        get_peft_model(model, tlora.lora_config(r=4, target_modules=["qkv_proj"]))
    with pytest.raises(ValueError, match="DoRA is not supported"):
        get_peft_model(tiny_llm(), tlora.lora_config(r=4, target_modules=["o_proj"],
                                                     use_dora=True))
    with pytest.raises(TypeError, match="LoraConfig"):
        tlora.register({"r": 4})


def test_import_ternary_ops_does_not_import_peft():
    import subprocess
    import sys
    code = "import sys, ternary_ops; print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_compile():
    wrapper = _wrapped(tops.TernaryLinear.from_linear(nn.Linear(32, 16), act="int8"))
    x = torch.randn(4, 32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(wrapper, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), wrapper(x), rtol=1e-6, atol=1e-6)
