"""use_huge_pages: a model's packed weights in one 2 MiB-aligned buffer of transparent huge pages
(Linux), with the same values, sharing kept, and nothing moved where the kernel says never."""
import pytest
import torch
from torch import nn

import ternary_ops as tops
import ternary_ops.memory as memory


def packed_weights(model):
    return [m.weight for m in model.modules()
            if isinstance(m, (tops.TernaryLinear, tops.Int8Linear, tops.Int8Embedding))]


def model_with_tied_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.skipif(memory._thp_mode() not in ("always", "madvise"),
                    reason="needs Linux with transparent huge pages not set to 'never'")
def test_weights_move_to_one_aligned_buffer(tmp_path):
    model = model_with_tied_head()
    tops.convert(model, head="int8", embedding="int8")  # convert ends with use_huge_pages
    weights = packed_weights(model)
    assert len({w.untyped_storage().data_ptr() for w in weights}) == 1
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        want = model(ids).logits
    before = [w.clone() for w in packed_weights(model)]
    unique = {id(w): w for w in weights}.values()
    assert tops.use_huge_pages(model) == sum(w.numel() * w.element_size() for w in unique)
    after = packed_weights(model)
    assert all(torch.equal(a, b) for a, b in zip(after, before))
    assert min(w.data_ptr() for w in after) % memory.HUGE_PAGE == 0
    assert all(w.data_ptr() % 64 == 0 for w in after)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, want)
    tops.save(model, tmp_path / "m.safetensors")  # views of one buffer save as usual
    other = model_with_tied_head()
    tops.load(tmp_path / "m.safetensors", other)
    with torch.no_grad():
        assert torch.equal(other(ids).logits, want)


def test_nothing_moves_without_huge_pages(monkeypatch):
    layer = nn.Sequential(tops.TernaryLinear(40, 24))
    weight = layer[0].weight
    monkeypatch.setattr(memory, "_thp_mode", lambda: "never")
    assert tops.use_huge_pages(layer) == 0 and layer[0].weight is weight
    monkeypatch.setattr(memory, "_thp_mode", lambda: None)  # not Linux
    assert tops.use_huge_pages(layer) == 0 and layer[0].weight is weight
    monkeypatch.setattr(memory, "_thp_mode", lambda: "madvise")
    assert tops.use_huge_pages(nn.Linear(4, 4)) == 0  # nothing packed
    layer.to("meta")
    assert tops.use_huge_pages(layer) == 0  # only CPU weights move
