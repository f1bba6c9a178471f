"""Fused projections (ternary_ops.fuse): one ternary layer for sibling layers that read the same
input, exactly as the separate layers; the slices' caching; save/load of the fused tree."""
import copy

import pytest
import torch
from torch import nn

import ternary_ops as tops
from ternary_ops.fuse import FusedSlice, fuse_layers, fuse_projections

from helpers import DTYPES, assert_bit_exact, dtype_id, run_ref


def layers_like(fmt, act, widths, k, *, gran="tensor", bias=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [tops.TernaryLinear.from_dense(torch.randn(n, k, generator=gen),
                                          torch.randn(n, generator=gen) if bias else None,
                                          format=fmt, act=act, granularity=gran)
            for n in widths]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_fused_layer_is_the_members_side_by_side(fmt, dtype):
    # Odd widths (1 row, rows not a multiple of 4, so the i2 repacking moves rows between bytes),
    # K=1, per-tensor and per-channel scales, with and without bias; act="int8" bit for bit
    # against the separate layers and the reference.
    seed = torch.randint(0, 2**31, ()).item()
    for widths, k, gran, bias in (((5, 1, 9), 37, "tensor", False), ((7, 3), 1, "channel", True),
                                  ((64, 16, 16), 130, "tensor", True),
                                  ((1, 1), 5, "channel", False)):
        for act in ("int8", "none"):
            layers = [m.to(dtype) for m in layers_like(fmt, act, widths, k, gran=gran, bias=bias,
                                                       seed=seed)]
            fused = fuse_layers(layers)
            assert fused.out_features == sum(widths) and fused.format == fmt
            for m in (1, 3, 17):
                x = torch.randn(m, k).to(dtype)
                want = torch.cat([layer(x) for layer in layers], dim=-1)
                got = fused(x)
                what = f"{fmt} {act} {gran} widths={widths} k={k} m={m} seed={seed}"
                if act == "int8":
                    assert_bit_exact(got, want, what)
                    assert_bit_exact(got, run_ref(fmt, x, fused.weight, fused.weight_scale,
                                                  fused.out_features, fused.bias, act), what)
                else:
                    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2, msg=what)


def test_fuse_layers_scales_and_refusals():
    same = layers_like("i2", "int8", (4, 4), 8)
    for layer in same:
        layer.weight_scale = torch.tensor(0.5)
    assert fuse_layers(same).weight_scale.dim() == 0  # one equal scalar stays a scalar
    diff = layers_like("i2", "int8", (4, 2), 8)
    diff[1].weight_scale = torch.tensor(0.25)
    scale = fuse_layers(diff).weight_scale
    assert scale.shape == (6,) and scale[4:].eq(0.25).all()
    assert scale[:4].eq(diff[0].weight_scale).all()
    cases = [(layers_like("i2", "int8", (4,), 8) + layers_like("i2", "int8", (4,), 9),
              "in_features differ"),
             (layers_like("i2", "int8", (4,), 8) + layers_like("i8", "int8", (4,), 8),
              "format or act differ"),
             (layers_like("i2", "int8", (4,), 8) + layers_like("i2", "int8", (4,), 8, bias=True),
              "some layers have a bias"),
             ([nn.Linear(8, 4)] + layers_like("i2", "int8", (4,), 8),
              "Linear is not a TernaryLinear")]
    for layers, why in cases:
        with pytest.raises(ValueError, match=why):
            fuse_layers(layers)


class Block(nn.Module):
    """Attention-like and MLP-like siblings, called in a model's order."""

    def __init__(self, k=40, bias=False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(k, n, bias=bias) for n in (40, 8, 8))
        self.gate_proj, self.up_proj = nn.Linear(k, 72, bias=bias), nn.Linear(k, 72, bias=bias)
        self.down_proj = nn.Linear(72, k, bias=bias)

    def forward(self, x):
        a = self.q_proj(x) * 0.5 + torch.cat([self.k_proj(x), self.v_proj(x)], -1).sum(-1,
                                                                                       keepdim=True)
        return self.down_proj(torch.nn.functional.silu(self.gate_proj(a)) * self.up_proj(a))


def converted(fuse, seed=0, bias=True):
    torch.manual_seed(seed)
    model = nn.Sequential(Block(bias=bias), Block(bias=bias)).eval()
    summary = tops.convert(model, exclude=(), fuse=fuse)
    return model, summary


def test_convert_fuses_siblings_with_identical_results():
    model, summary = converted(fuse=True)
    plain, _ = converted(fuse=False)
    assert summary.fused == {f"{i}.{name}": [f"{i}.{m}" for m in members]
                             for i in (0, 1) for members, name in
                             ((("q_proj", "k_proj", "v_proj"), "qkv_proj"),
                              (("gate_proj", "up_proj"), "gate_up_proj"))}
    assert "fused 4 groups (gate_proj/up_proj -> gate_up_proj, q_proj/k_proj/v_proj -> " \
           "qkv_proj)" in str(summary)
    block = model[0]
    assert isinstance(block.k_proj, FusedSlice) and isinstance(block.qkv_proj, tops.TernaryLinear)
    assert "(k_proj): FusedSlice(rows 40:48 of qkv_proj (in_features=40, out_features=8))" \
        in str(model)
    assert not any(k.startswith("0.q_proj") for k in model.state_dict())
    torch.testing.assert_close(block.v_proj.dequantize(), plain[0].v_proj.dequantize())
    assert torch.equal(block.k_proj.bias, plain[0].k_proj.bias)
    for m in (1, 6):
        x = torch.randn(m, 40)
        with torch.no_grad():
            assert_bit_exact(model(x), plain(x), f"m={m}")
    # gradients reach the input and the (fused) biases as they did the separate ones
    x = torch.randn(3, 40, requires_grad=True)
    xp = x.detach().clone().requires_grad_()
    model(x).sum().backward()
    plain(xp).sum().backward()
    torch.testing.assert_close(x.grad, xp.grad)
    torch.testing.assert_close(model[0].qkv_proj.bias.grad[40:48], plain[0].k_proj.bias.grad)


def test_fused_output_computed_once_per_input(monkeypatch):
    model, _ = converted(fuse=True)
    block = model[0]
    calls = []
    real = tops.TernaryLinear.forward
    monkeypatch.setattr(tops.TernaryLinear, "forward",
                        lambda self, x: calls.append(self.layer_name) or real(self, x))
    x, y = torch.randn(2, 40), torch.randn(2, 40)
    with torch.no_grad():
        q, k, v = block.q_proj(x), block.k_proj(x), block.v_proj(x)
        assert calls == ["0.qkv_proj"]
        want = block.qkv_proj(x)
        assert torch.equal(torch.cat([q, k, v], -1), want)
        calls.clear()
        # another order, another input in between, a repeated call: each slice stays right
        assert torch.equal(block.v_proj(x), want[:, 48:])
        assert torch.equal(block.q_proj(y), block.qkv_proj(y)[:, :40])
        assert torch.equal(block.k_proj(x), want[:, 40:48])
        assert torch.equal(block.k_proj(x), want[:, 40:48])
        # an in-place change of the input between two slices is seen
        z = x.clone()
        block.q_proj(z)
        z.mul_(2)
        assert torch.equal(block.k_proj(z), block.qkv_proj(z)[:, 40:48])
    assert block._modules["k_proj"]._pending is block._modules["q_proj"]._pending


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_model_compiles_fullgraph(backend):
    model, _ = converted(fuse=True, seed=3)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        for m in (1, 4):
            x = torch.randn(m, 40)
            if backend == "aot_eager":
                assert_bit_exact(compiled(x), model(x), f"{backend} m={m}")
            else:  # Inductor fuses the model's own float ops (silu, *, +): their rounding moves
                torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    assert model[0].q_proj._pending.state is None  # nothing kept alive between calls


def test_fused_save_load_round_trip(tmp_path):
    model, _ = converted(fuse=True, seed=1)
    copied = copy.deepcopy(model)
    assert copied[0].q_proj.fused is copied[0].qkv_proj  # the copy keeps its own sharing
    tops.save(model, tmp_path / "m.safetensors")
    x = torch.randn(5, 40)
    with torch.no_grad():
        want = model(x)
        # into a fresh dense model: the fused tree is rebuilt
        fresh = nn.Sequential(Block(bias=True), Block(bias=True)).eval()
        tops.load(tmp_path / "m.safetensors", fresh)
        assert isinstance(fresh[1].up_proj, FusedSlice)
        assert sorted(str(fresh).splitlines()) == sorted(str(model).splitlines())
        assert_bit_exact(fresh(x), want, "reloaded")
        # into the fused model itself
        tops.load(tmp_path / "m.safetensors", copied)
        assert_bit_exact(copied(x), want, "reloaded in place")
    state = tops.load(tmp_path / "m.safetensors")
    assert "0.qkv_proj.weight" in state and "0.q_proj.weight" not in state


def test_fused_load_errors(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    model, _ = converted(fuse=True, seed=2)
    path = tmp_path / "m.safetensors"
    tops.save(model, path)
    small = nn.Sequential(Block(k=40), Block(k=40))
    small[0].k_proj = nn.Linear(40, 9)
    with pytest.raises(ValueError, match=r"member 'k_proj' is 40 -> 8 in the file but 40 -> 9"):
        tops.load(path, small)
    with safe_open(str(path), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    info = json.loads(meta["ternary_ops"])
    for bad, match in (([["q_proj", 40], ["k_proj", 8]], "adding up to out_features=56"),
                       ([["q_proj", 56]], "at least 2 members"),
                       ([["q.proj", 40], ["k_proj", 8], ["v_proj", 8]], "malformed 'fuses'"),
                       ([["q_proj", 40], ["q_proj", 8], ["v_proj", 8]], "distinct names")):
        info["layers"]["0.qkv_proj"]["fuses"] = bad
        save_file(tensors, str(tmp_path / "bad.safetensors"),
                  metadata={**meta, "ternary_ops": json.dumps(info)})
        with pytest.raises(ValueError, match=match):
            tops.load(tmp_path / "bad.safetensors")


def test_fuse_projections_leaves_unfit_groups():
    torch.manual_seed(0)
    model = nn.Sequential(Block())
    tops.convert(model, exclude=(), fuse=False)
    model[0].k_proj = tops.TernaryLinear(40, 8, format="i8")  # another format: q/k/v stay
    assert fuse_projections(model) == {"0.gate_up_proj": ["0.gate_proj", "0.up_proj"]}
    assert isinstance(model[0].q_proj, tops.TernaryLinear)
    assert fuse_projections(model) == {}  # already fused groups are not fused again
    enc_dec = nn.Sequential(Block())
    tops.convert(enc_dec, exclude=(), fuse=False)
    enc_dec.config = type("Config", (), {"is_encoder_decoder": True})()
    assert fuse_projections(enc_dec) == {}
