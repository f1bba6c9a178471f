"""TernaryLinear, convert, save/load and bad-input errors."""
import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from torch import nn

import ternary_ops as tops
from ternary_ops import reference

from helpers import random_codes


def test_ternary_linear_from_linear_matches_reference():
    lin = nn.Linear(65, 17)
    for format in ("i2", "i8"):
        for act in ("int8", "none"):
            for gran in ("tensor", "channel"):
                layer = tops.TernaryLinear.from_linear(lin, format=format, act=act,
                                                       granularity=gran)
                codes, scale = tops.quantize(lin.weight, gran)
                x = torch.randn(3, 65)
                want = reference.linear_codes(x, codes, scale, lin.bias, act)
                torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
                assert layer.granularity == gran
                assert torch.equal(layer.dequantize(), codes.float() * (
                    scale if gran == "tensor" else scale[:, None]))


def test_ternary_linear_buffers_repr_and_dtype_moves():
    layer = tops.TernaryLinear(64, 10, format="i2", act="int8")
    assert layer.weight.shape == (3, 64) and layer.weight.dtype == torch.uint8
    assert set(layer.state_dict()) == {"weight", "weight_scale", "bias"}
    r = repr(layer)
    assert "format=i2" in r and "act=int8" in r and "weight_memory=196 B" in r
    layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    layer.half()
    assert layer.weight_scale.dtype == torch.float32 and layer.weight.dtype == torch.uint8
    y = layer(torch.randn(2, 64, dtype=torch.float16))
    assert y.dtype == torch.float16
    with pytest.raises(ValueError, match="format must be one of"):
        tops.TernaryLinear(4, 4, format="i4")
    with pytest.raises(ValueError, match="act must be one of"):
        tops.TernaryLinear(4, 4, act="fp8")


def test_state_dict_roundtrip_and_validation():
    src = tops.TernaryLinear.from_linear(nn.Linear(33, 9), granularity="channel")
    dst = tops.TernaryLinear(33, 9)  # per-tensor scale: loading adopts the saved granularity
    sd = src.state_dict()
    dst.load_state_dict(sd)
    assert dst.granularity == "channel"
    x = torch.randn(4, 33)
    assert torch.equal(dst(x), src(x))
    bad = {k: v.clone() for k, v in sd.items()}
    bad["weight"][0, 0] = 0xFF
    with pytest.raises(RuntimeError, match="invalid codes 0b11"):
        tops.TernaryLinear(33, 9).load_state_dict(bad)
    assert sd["weight"][0, 0] != 0xFF  # the caller's dict is untouched
    wrong = dict(sd, weight=torch.zeros(9, 33, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=r"expected i2 weight torch.uint8 \[3, 33\]"):
        tops.TernaryLinear(33, 9).load_state_dict(wrong)


class Conv1D(nn.Module):
    """Stand-in with the shape of Hugging Face's GPT-2 Conv1D (weight stored [in, out])."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_convert_defaults_exclude_filter_and_summary():
    model = nn.Sequential()
    model.add_module("a", nn.Linear(32, 64))
    model.add_module("c", Conv1D(48, 64))
    model.add_module("b", nn.Linear(48, 32))
    model.add_module("lm_head", nn.Linear(32, 100))
    x = torch.randn(2, 32)
    summary = tops.convert(model)
    assert summary.replaced == ["a", "c", "b"] and summary.skipped == ["lm_head"]
    assert isinstance(model.c, tops.TernaryLinear) and model.c.in_features == 64
    assert isinstance(model.lm_head, nn.Linear)
    assert summary.bytes_before == 4 * (32 * 64 + 64 * 48 + 48 * 32)
    assert summary.bytes_after == sum(getattr(model, n).weight_bytes() for n in "acb")
    assert "converted 3 linear layers" in str(summary)
    assert model(x).shape == (2, 100)

    m2 = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8))
    s2 = tops.convert(m2, exclude=["1"], filter=lambda name, mod: name != "2", format="i8")
    assert s2.replaced == ["0"] and sorted(s2.skipped) == ["1", "2"]
    assert m2[0].format == "i8"

    m3 = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
    s3 = tops.convert(m3, exclude=(), progress=True)
    assert s3.layers_replaced == 3


def test_convert_conv1d_matches_dense_direction():
    conv = Conv1D(6, 5)
    model = nn.Sequential(conv)
    dense = conv.weight.detach().t().clone()
    tops.convert(model, exclude=(), act="none")
    codes, scale = tops.quantize(dense)
    x = torch.randn(3, 5)
    torch.testing.assert_close(model(x), x @ (codes.float() * scale).T, rtol=1e-5, atol=1e-5)


def _model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(40, 24), nn.GELU(), nn.Linear(24, 7, bias=False))


def test_save_load_roundtrip(tmp_path):
    model = _model()
    tops.convert(model, exclude=(), granularity="channel")
    model[0].act = "none"
    path = tmp_path / "m.safetensors"
    tops.save(model, path)
    fresh = tops.load(path, _model())  # dense model: layers rebuilt from metadata
    assert isinstance(fresh[0], tops.TernaryLinear) and fresh[0].act == "none"
    assert fresh[2].bias is None and fresh[2].format == "i2"
    x = torch.randn(3, 40)
    assert torch.equal(fresh(x), model(x))
    sd = tops.load(path)
    assert sd["0.weight"].dtype == torch.uint8 and torch.equal(sd["0.weight"], model[0].weight)


def test_save_tied_weights(tmp_path):
    model = nn.Module()
    model.emb = nn.Embedding(11, 8)
    model.head = nn.Linear(8, 11, bias=False)
    model.head.weight = model.emb.weight
    tops.save(model, tmp_path / "t.safetensors")
    sd = tops.load(tmp_path / "t.safetensors")
    assert torch.equal(sd["head.weight"], sd["emb.weight"])


def _rewrite(path, tensors=None, meta=None):
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = f.metadata()
    if tensors:
        t.update(tensors)
    if meta:
        info = json.loads(m["ternary_ops"])
        meta(info)
        m["ternary_ops"] = json.dumps(info)
    save_file(t, str(path), metadata=m)


def test_load_rejects_bad_files(tmp_path):
    model = _model()
    tops.convert(model, exclude=())
    path = tmp_path / "m.safetensors"
    tops.save(model, path)

    corrupt = model[0].weight.clone()
    corrupt[2, 5] = 0xFF
    _rewrite(path, tensors={"0.weight": corrupt})
    with pytest.raises(ValueError, match="layer '0': i2 weight has .* invalid codes"):
        tops.load(path)

    tops.save(model, path)
    _rewrite(path, meta=lambda i: i["layers"]["0"].update(format="i4"))
    with pytest.raises(ValueError, match="unknown format 'i4'"):
        tops.load(path)

    tops.save(model, path)
    _rewrite(path, meta=lambda i: i["layers"]["0"].update(out_features=30))
    with pytest.raises(ValueError, match=r"weight must be torch.uint8 \[8, 40\]"):
        tops.load(path)

    tops.save(model, path)
    other = nn.Sequential(nn.Linear(40, 25), nn.GELU(), nn.Linear(25, 7, bias=False))
    with pytest.raises(ValueError, match="40 -> 24 in the file but 40 -> 25 in the model"):
        tops.load(path, other)

    _rewrite(path, meta=lambda i: i.update(version=99))
    with pytest.raises(ValueError, match="unsupported 'ternary_ops' metadata version 99"):
        tops.load(path)


# ---- bad input to the ops -------------------------------------------------------------------

def test_op_errors_name_expected_and_got():
    codes = random_codes(8, 16)
    w2 = tops.pack_i2(codes)
    s = torch.tensor(1.0)
    x = torch.randn(2, 16)
    i8, i2 = torch.ops.ternary.linear_i8, torch.ops.ternary.linear_i2
    cases = [
        (lambda: i8(x.int(), codes, s, None, "int8"), "x must be float32, bfloat16 or float16, got Int"),
        (lambda: i8(x, codes.float(), s, None, "int8"), "weight must be int8 \\(format i8\\), got Float"),
        (lambda: i8(torch.randn(2, 15), codes, s, None, "int8"),
         "x must have shape \\[..., in_features\\] with in_features = weight.size\\(1\\) = 16, "
         "got x of shape \\[2, 15\\]"),
        (lambda: i2(torch.randn(3, 2, 17), w2, s, 8, None, "none"),
         "in_features = weight.size\\(1\\) = 16, got x of shape \\[3, 2, 17\\]"),
        (lambda: i2(x, w2, s, 9, None, "int8"),
         "weight must have ceil\\(out_features / 4\\) = 3 rows for out_features = 9, got weight of "
         "shape \\[2, 16\\]"),
        (lambda: i2(x, w2, s, 2**63 - 1, None, "int8"),
         "ceil\\(out_features / 4\\) = 2305843009213693952 rows for out_features = 9223372036854775807"),
        (lambda: i2(x, codes, s, 8, None, "int8"), "weight must be uint8 \\(format i2\\), got Char"),
        (lambda: i2(x, w2, torch.ones(3), 8, None, "int8"), "scale must be a scalar or have shape \\[N\\] = \\[8\\], got \\[3\\]"),
        (lambda: i2(x, w2, s, 8, torch.ones(7), "int8"), "bias must have shape \\[N\\] = \\[8\\], got \\[7\\]"),
        (lambda: i2(x, w2, s, 8, None, "fp8"), "act must be 'int8' or 'none', got 'fp8'"),
        (lambda: i2(x, w2, s, 0, None, "int8"), "out_features must be >= 1, got 0"),
        (lambda: i8(x, codes, torch.tensor(1), None, "int8"), "scale must be a floating tensor"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


@pytest.mark.parametrize("fmt", ["i8", "i2"])
def test_int8_rejects_k_beyond_the_int32_dot(fmt):
    # |dot| <= 128 K must fit an int32: K = 2**24 - 1 is the largest act="int8" takes. Expanded
    # (zero-stride) tensors: the check comes before any allocation or arithmetic.
    k = tops.formats.ACT_MAX_K + 1
    x = torch.zeros(1).expand(1, k)
    s = torch.tensor(1.0)
    if fmt == "i8":
        call = lambda act: torch.ops.ternary.linear_i8(  # noqa: E731
            x, torch.zeros(1, 1, dtype=torch.int8).expand(1, k), s, None, act)
    else:
        call = lambda act: torch.ops.ternary.linear_i2(  # noqa: E731
            x, torch.full((1, 1), 0x55, dtype=torch.uint8).expand(1, k), s, 1, None, act)
    with pytest.raises(ValueError, match=f"exact for in_features <= {k - 1}; got in_features = {k}"):
        call("int8")
    with torch.device("meta"):  # the fake kernel (torch.compile) says the same
        with pytest.raises(ValueError, match="exact for in_features"):
            torch.ops.ternary.linear_i8(torch.empty(1, k), torch.empty(1, k, dtype=torch.int8),
                                        torch.ones(()), None, "int8")
    assert torch.equal(call("none"), torch.zeros(1, 1))  # act="none" sums in float: no limit


def test_device_mismatch_error():
    codes = random_codes(8, 16)
    x = torch.empty(2, 16, device="meta")
    with pytest.raises(ValueError, match=r"all tensors must be on x's device \(meta\), got weight on cpu"):
        torch.ops.ternary.linear_i8(x, codes, torch.ones((), device="meta"), None, "int8")
    with pytest.raises(ValueError, match=r"all tensors must be on x's device \(cpu\), got scale on meta"):
        torch.ops.ternary.linear_i8(torch.randn(2, 16), codes, torch.ones((), device="meta"),
                                    None, "int8")


# ---- convert and save / load: what a user's model needs ---------------------------------------

def test_convert_leaves_multihead_attention_out_proj_dense():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    summary = tops.convert(layer, exclude=[], act="none")
    assert isinstance(layer.self_attn.out_proj, nn.Linear)
    assert isinstance(layer.linear1, tops.TernaryLinear)
    assert "self_attn.out_proj" in summary.skipped
    assert "reads its weight directly" in summary.notes["self_attn.out_proj"]
    assert "self_attn.out_proj: left dense" in str(summary)
    x = torch.randn(2, 5, 32)
    out = layer(x)
    assert out.shape == (2, 5, 32) and torch.isfinite(out).all()
    # eval + no grad is the inference fast path, which reads linear1 / linear2's weights
    assert "inference fast path turned off" in summary.notes["TransformerEncoderLayer"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), out)


class AttentionModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def test_convert_a_model_calling_multihead_attention():
    model = AttentionModel().eval()
    summary = tops.convert(model, exclude=[])
    assert summary.replaced == ["head"] and summary.skipped == ["attn.out_proj"]
    assert ("attn.out_proj: left dense: MultiheadAttention reads its weight directly instead "
            "of calling it") in str(summary)
    x = torch.randn(2, 5, 32)
    out = model(x)
    with torch.no_grad():  # MultiheadAttention's own fast path
        torch.testing.assert_close(model(x), out)


def _dequantized_twin(model, converted):
    """A float copy of ``model`` whose layers replaced in ``converted`` hold ``s * T``."""
    import copy
    twin = copy.deepcopy(model)
    for name, m in converted.named_modules():
        if isinstance(m, tops.TernaryLinear):
            lin = twin.get_submodule(name)
            with torch.no_grad():
                lin.weight.copy_(m.dequantize())
    return twin


@pytest.mark.parametrize("build", [
    lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
    lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                  enable_nested_tensor=False),
    AttentionModel], ids=["encoder_layer", "encoder", "mha_model"])
def test_converted_attention_models_match_their_dequantized_float_model(build):
    import copy
    model = build().eval()
    converted = copy.deepcopy(model)
    summary = tops.convert(converted, exclude=[], act="none")
    assert summary.replaced and all(s.endswith("out_proj") for s in summary.skipped)
    twin = _dequantized_twin(model, converted)
    x = torch.randn(2, 5, 32)
    for grad in (True, False):  # with and without the inference fast paths
        with torch.set_grad_enabled(grad):
            torch.testing.assert_close(converted(x), twin(x), rtol=1e-4, atol=1e-4)


def test_convert_transformer_encoder_with_padding_mask():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2,
                                enable_nested_tensor=True).eval()
    summary = tops.convert(enc, exclude=[], act="none")
    assert len(summary.replaced) == 4 and not enc.use_nested_tensor
    x = torch.randn(2, 5, 32)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    want = enc(x, src_key_padding_mask=mask)
    with torch.inference_mode():
        got = enc(x, src_key_padding_mask=mask)
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[0, :3], want[0, :3])


def test_convert_warns_on_float64_and_on_a_second_run():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)).double()
    with pytest.warns(UserWarning, match="float64"):
        tops.convert(model, exclude=[])
    with pytest.warns(UserWarning, match="2 layers of the model are already TernaryLinear"):
        summary = tops.convert(model, exclude=[], format="i8")
    assert summary.replaced == [] and model[0].format == "i2"
    assert summary.already_ternary == 2
    assert str(summary) == "converted no layers (2 layers already TernaryLinear, left as they are)"
    model.append(nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="2 layers of the model are already TernaryLinear"):
        summary = tops.convert(model.float(), exclude=[])
    assert summary.replaced == ["2"]
    assert "; 2 layers already TernaryLinear, left as they are;" in str(summary)


def test_convert_a_bare_linear_returns_a_ternary_layer_and_reports_nothing_to_convert():
    lin = nn.Linear(16, 8)
    layer = tops.convert(lin, format="i8", act="none", granularity="channel")
    assert isinstance(layer, tops.TernaryLinear) and isinstance(lin, nn.Linear)
    assert (layer.format, layer.act, layer.granularity) == ("i8", "none", "channel")
    x = torch.randn(3, 16)
    want = tops.TernaryLinear.from_linear(lin, format="i8", act="none", granularity="channel")
    assert torch.equal(layer(x), want(x))
    with pytest.warns(UserWarning, match=r"the layer is float64.*call layer.float\(\)"):
        tops.convert(nn.Linear(4, 4).double())
    summary = tops.convert(nn.Sequential(nn.ReLU()))
    assert str(summary) == "converted no layers: the model has no nn.Linear or Conv1D layer"
    assert "nan" not in str(summary)


def test_absurd_layer_sizes_are_refused_clearly():
    big = 2 ** 63 - 1
    with pytest.raises(ValueError, match=rf"^TernaryLinear: in_features=16, out_features={big} is "
                       r"too large: an i2 weight of 2305843009213693952 x 16 bytes"):
        tops.TernaryLinear(16, big)
    with pytest.raises(ValueError, match=rf"in_features={big}, out_features=8 is too large: an "
                       rf"i8 weight of 8 x {big} bytes"):
        tops.TernaryLinear(big, 8, format="i8")
    with pytest.raises(ValueError, match=r"too large"):
        tops.TernaryLinear(2 ** 40, 2 ** 40)
    with pytest.raises(TypeError, match=r"^TernaryLinear: in_features must be an int, got float"):
        tops.TernaryLinear(16.0, 8)
    with pytest.raises(TypeError, match=r"out_features must be an int, got bool"):
        tops.TernaryLinear(16, True)
    with pytest.raises(ValueError, match=r"^TernaryLinear: out_features must be >= 1, got 0"):
        tops.TernaryLinear(16, 0)
    for n in (2 ** 64, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"out_features must be an int in \[0, 2\*\*63 - 1\]"):
            tops.formats.packed_rows(n)
    packed = torch.full((2, 3), 0x55, dtype=torch.uint8)
    for n in (big, 2 ** 64, 2.0, True):
        with pytest.raises(ValueError, match=r"out_features"):
            tops.unpack_i2(packed, n)
        with pytest.raises(ValueError, match=r"out_features"):
            tops.validate_weight(packed, "i2", n)


def test_wrong_x_width_names_x_and_the_layer(tmp_path):
    with pytest.raises(ValueError, match=r"^TernaryLinear \(in_features=16, out_features=8\): x "
                       r"has width 15 \(shape \[2, 15\]\); its last dimension must be "
                       r"in_features = 16$"):
        tops.TernaryLinear(16, 8)(torch.randn(2, 15))
    with pytest.raises(ValueError, match=r"x has no dimensions \(shape \[\]\)"):
        tops.TernaryLinear(16, 8)(torch.tensor(1.0))
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    tops.convert(model, exclude=[])
    with pytest.raises(ValueError, match=r"^TernaryLinear '2' \(in_features=8, out_features=4\): "
                       r"x has width 9 "):
        model[2](torch.randn(3, 9))
    path = tmp_path / "m.safetensors"
    tops.save(model, path)
    fresh = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), tops.TernaryLinear(8, 4))
    tops.load(path, fresh)
    for i in (0, 2):
        with pytest.raises(ValueError, match=rf"^TernaryLinear '{i}' .* x has width 5 "):
            fresh[i](torch.randn(5))
    from ternary_ops.hf import BitNetLinear
    with pytest.raises(ValueError, match=r"^BitNetLinear \(in_features=16, out_features=8\): x has "
                       r"width 12"):
        BitNetLinear(16, 8, use_rms_norm=True)(torch.randn(12))


def test_save_and_load_take_either_argument_order(tmp_path):
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    tops.convert(model, exclude=[])
    path = tmp_path / "m.safetensors"
    tops.save(path, model)
    fresh = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    tops.load(fresh, str(path))
    x = torch.randn(2, 16)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(TypeError, match=r"path must be a str or os.PathLike, got int"):
        tops.save(model, 3)
    with pytest.raises(TypeError, match=r"model must be an nn.Module, got dict"):
        tops.load(path, {})
    # ambiguous: nothing to swap; the error names the order
    with pytest.raises(TypeError, match=r"^save\(model_or_state, path\): path must be a str or "
                       r"os.PathLike, got Sequential"):
        tops.save(model, fresh)
    with pytest.raises(TypeError, match=r"^save\(model_or_state, path\): model_or_state must be "
                       r"an nn.Module or a state dict, got PosixPath"):
        tops.save(path, path)
    with pytest.raises(TypeError, match=r"^load\(path, model\): path must be a str or "
                       r"os.PathLike, got Sequential"):
        tops.load(model, fresh)
    with pytest.raises(TypeError, match=r"^load\(path, model\): model must be an nn.Module, got "
                       r"str"):
        tops.load(path, str(path))
    with pytest.raises(TypeError, match=r"^load\(path, model\): got a Sequential as path and no "
                       r"model"):
        tops.load(model)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "not.safetensors"
    bad.write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match=f"{bad}: not a safetensors file"):
        tops.load(bad)
    with pytest.raises(IsADirectoryError, match=f"{tmp_path}: is a directory.*load_pretrained"):
        tops.load(tmp_path)
    model = nn.Sequential(nn.Linear(16, 8))
    tops.convert(model, exclude=[])
    path = tmp_path / "m.safetensors"
    tops.save(model, path)
    from safetensors.torch import load_file, save_file
    meta = {"ternary_ops": json.dumps({"version": 1, "layers": ["0"], "aliases": {}})}
    save_file(load_file(path), tmp_path / "list.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="'layers' must be a JSON object, got list"):
        tops.load(tmp_path / "list.safetensors")
    for raw, match in [("null", "metadata: must be a JSON object, got NoneType"),
                       ("[1]", "metadata: must be a JSON object, got list"),
                       ('{"layers": {}}', "metadata version None; expected 1"),
                       ('{"version": 1, "layers": {"0": {"format": "i2", "act": "int8", '
                        '"in_features": true, "out_features": 8}}}', "bad shapes in metadata"),
                       ('{"version": 1, "layers": {"0": []}}', "layer '0' must be a JSON object")]:
        bad_meta = tmp_path / "meta.safetensors"
        save_file(load_file(path), bad_meta, metadata={"ternary_ops": raw})
        with pytest.raises(ValueError, match=f"{bad_meta}: .*{match}"):
            tops.load(bad_meta)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="cut.safetensors: not a safetensors file, or a damaged"):
        tops.load(tmp_path / "cut.safetensors")
    with pytest.warns(UserWarning, match="nothing in .* matched"):
        tops.load(path, nn.ModuleDict({"other": nn.Linear(2, 2)}), strict=False)


def test_save_keeps_the_umask_mode(tmp_path):
    model = nn.Sequential(nn.Linear(16, 8))
    tops.convert(model, exclude=[])
    for umask, mode in [(0o022, 0o644), (0o077, 0o600)]:
        old = os.umask(umask)
        try:
            path = tmp_path / f"m{umask:o}.safetensors"
            tops.save(model, path)  # a new file
            os.chmod(path, 0o640)
            tops.save(model, path)  # replacing a file
        finally:
            os.umask(old)
        assert os.stat(path).st_mode & 0o777 == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m22.safetensors", "m77.safetensors"]


def test_save_never_changes_the_process_umask(tmp_path, monkeypatch):
    """The umask is process-wide: setting it, even for a moment, would give files other threads
    create meanwhile the wrong mode. save lets the kernel apply it to a new file instead."""
    old = os.umask(0o027)
    try:
        def no_umask(mask):
            raise AssertionError(f"os.umask({mask:o}) called")

        monkeypatch.setattr(os, "umask", no_umask)
        path = tmp_path / "m.safetensors"
        tops.save({"w": torch.zeros(4)}, path)
        monkeypatch.undo()
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_save_failing_midway_keeps_the_old_file_and_no_temporary_file(tmp_path, monkeypatch,
                                                                        error):
    path = tmp_path / "m.safetensors"
    tops.save({"w": torch.arange(10.0)}, path)
    before = path.read_bytes()
    seen = []

    def half_write(tensors, tmp, metadata):
        seen.append(os.path.basename(tmp))
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise error("disk full")

    monkeypatch.setattr(tops.io, "_save_file", half_write)
    with pytest.raises(error, match="disk full"):
        tops.save({"w": torch.zeros(1000)}, path)
    assert len(seen) == 1 and seen[0].startswith(".m.safetensors.tmp-")
    assert os.listdir(tmp_path) == ["m.safetensors"] and path.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="directory .*nowhere does not exist"):
        tops.save({"w": torch.zeros(2)}, tmp_path / "nowhere" / "m.safetensors")
    with pytest.raises(IsADirectoryError):
        tops.save({"w": torch.zeros(2)}, tmp_path)


def test_killed_save_leaves_the_previous_file_intact(tmp_path):
    """A save killed (SIGKILL) while it writes a large file leaves the file it was replacing as
    it was. The test kills the saving process as soon as a new file appears in the folder or the
    old one changes."""
    path = tmp_path / "m.safetensors"
    small = {"w": torch.arange(10.0)}
    tops.save(small, path)
    before, stat = path.read_bytes(), os.stat(path)
    script = textwrap.dedent(f"""
        import torch, ternary_ops as tops
        tops.save({{"w": torch.ones(128, 1024, 1024)}}, {str(path)!r})  # 512 MiB
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    killed = False
    while proc.poll() is None:
        try:
            now = os.stat(path)
            writing = [p for p in tmp_path.iterdir() if p != path and p.stat().st_size > 0]
        except FileNotFoundError:  # a file came or went between the calls
            writing = [path]
        if writing or (now.st_ino, now.st_size, now.st_mtime_ns) != (
                stat.st_ino, stat.st_size, stat.st_mtime_ns):
            proc.kill()
            killed = True
            break
        time.sleep(0.0005)
    proc.wait()
    assert killed and proc.returncode == -9, proc.stderr.read().decode()[-2000:]
    assert path.read_bytes() == before
    assert torch.equal(tops.load(path)["w"], small["w"])
    # what a kill leaves behind is hidden temporaries (ours, .m.safetensors.tmp-XXXXXXXX, and
    # any safetensors itself writes through), never a partial m.safetensors
    left = [p.name for p in tmp_path.iterdir() if p != path]
    assert any(n.startswith(".m.safetensors.tmp-") for n in left), left
    assert all(n.startswith(".") for n in left), left


# ---- convert measures what ternarization did ----------------------------------------------

def test_convert_warns_when_the_weights_were_not_ternary():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 40))
    with pytest.warns(tops.TernarizationWarning,
                      match="not ternary to begin with.*loses most of its quality"):
        summary = tops.convert(model, exclude=())
    assert summary.calibration == "random inputs"
    assert set(summary.errors) == {"0", "2"}
    assert all(0.2 < e < 0.8 for e in summary.errors.values()), summary.errors
    assert "relative output error median" in str(summary)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("act", ["int8", "none"])
def test_convert_of_ternary_valued_weights_is_exact_and_quiet(granularity, act):
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(48, 72), nn.ReLU(), nn.Linear(72, 20))
    codes, scales = [], []
    with torch.no_grad():
        for layer in (model[0], model[2]):
            t = torch.randint(-1, 2, layer.weight.shape, generator=gen)
            s = (torch.rand(layer.weight.shape[0], 1, generator=gen) + 0.1
                 if granularity == "channel" else torch.tensor(0.037))
            layer.weight.copy_(t * s)
            codes.append(t.to(torch.int8))
            scales.append(s.reshape(-1) if granularity == "channel" else s)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tops.TernarizationWarning)
        summary = tops.convert(model, exclude=(), act=act, granularity=granularity)
    for layer, t, s in zip((model[0], model[2]), codes, scales):
        assert torch.equal(tops.unpack_i2(layer.weight, layer.out_features), t)
        assert torch.equal(layer.weight_scale, s.float())
    # act="none" differs from the dense product by float rounding only; act="int8" by the
    # activations' int8 rounding
    bound = 1e-5 if act == "none" else 0.02
    assert max(summary.errors.values()) < bound, summary.errors


def test_convert_measures_on_a_calibration_batch():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.unused = nn.Linear(16, 24), nn.Linear(24, 8), nn.Linear(8, 8)

        def forward(self, x=None):
            return self.b(torch.relu(self.a(x)))

    from ternary_ops.convert import _relative_error

    torch.manual_seed(2)
    batch = torch.randn(3, 5, 16) * 4 + 1
    for given in (batch, {"x": batch}, (batch,)):
        model = Net()
        dense_a = model.a.weight.detach().clone()
        first_rows = batch.reshape(-1, 16)[:32]
        with torch.no_grad():
            alone = tops.TernaryLinear.from_dense(dense_a, model.a.bias.detach())
        want = _relative_error(dense_a, alone, first_rows)
        summary = tops.convert(model, exclude=(), calibration=given)
        assert summary.calibration == "calibration batch"
        assert summary.errors["a"] == want
        assert set(summary.errors) == {"a", "b", "unused"}  # "unused": random inputs
    # the calibration run neither trains nor changes the model's mode
    model = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Dropout(0.5))
    stats = model[1].running_mean.clone()
    tops.convert(model, exclude=(), calibration=torch.randn(8, 16) + 3)
    assert model.training and torch.equal(model[1].running_mean, stats)
    model = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tops.TernarizationWarning)
        summary = tops.convert(model, exclude=(), calibration=False)
    assert summary.errors == {} and summary.calibration is None
    assert "relative output error" not in str(summary)
