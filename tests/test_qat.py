"""Quantization-aware training (ternary_ops.qat): the QAT forward is the packed op's, its
gradients are the straight-through estimator's, and convert() afterwards gives the same bits."""
import warnings

import pytest
import torch
from torch import nn

import ternary_ops as tops
from ternary_ops import reference


def _mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 72, bias=bias), nn.ReLU(), nn.Linear(72, 24, bias=bias))


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("act", ["int8", "none"])
def test_qat_forward_is_the_ternary_op_of_the_latent_codes(granularity, act):
    model = _mlp()
    names = tops.prepare_qat(model, exclude=(), act=act, granularity=granularity)
    assert names == ["0", "2"] and isinstance(model[0], tops.QATLinear)
    x = torch.randn(7, 3, 40)
    layer = model[0]
    codes, scale = tops.quantize(layer.weight, granularity)
    want = reference.linear_codes(x, codes, scale, layer.bias, act)
    with torch.no_grad():
        got = layer(x)
    if act == "int8":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["int8", "none"])
def test_qat_gradients_are_straight_through(act):
    torch.manual_seed(3)
    layer = tops.QATLinear(33, 17, act=act, granularity="channel")
    x = torch.randn(5, 33, requires_grad=True)
    g = torch.randn(5, 17)
    layer(x).backward(g)
    codes, scale = tops.quantize(layer.weight, "channel")
    w = codes.float() * scale[:, None]
    if act == "int8":
        q, inv = reference.quantize_activations(x.detach())
        xq = q / inv
    else:
        xq = x.detach()
    torch.testing.assert_close(x.grad, g @ w)
    torch.testing.assert_close(layer.weight.grad, g.t() @ xq)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_training_then_convert_gives_the_same_outputs(fmt, granularity):
    teacher = _mlp(seed=1)
    student = _mlp(seed=2)
    tops.prepare_qat(student, format=fmt, exclude=(), granularity=granularity)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(4)
    losses = []
    for _ in range(60):
        x = torch.randn(32, 40, generator=gen)
        loss = nn.functional.mse_loss(student(x), teacher(x).detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10]), losses  # it learns
    x = torch.randn(9, 40, generator=gen)
    with torch.no_grad():
        want = student(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tops.TernarizationWarning)
        summary = tops.convert(student, format="i8" if fmt == "i2" else "i2", exclude=())
    assert isinstance(student[0], tops.TernaryLinear)
    assert student[0].format == fmt and student[0].granularity == granularity  # its own
    assert max(summary.errors.values()) == 0.0
    with torch.no_grad():
        assert torch.equal(student(x), want)


def test_prepare_qat_keeps_parameters_and_rejects_bad_arguments():
    model = _mlp(bias=False)
    params = [model[0].weight, model[2].weight]
    tops.prepare_qat(model, exclude=("2",))
    assert model[0].weight is params[0] and type(model[2]) is nn.Linear
    assert model[0].bias is None
    with pytest.raises(ValueError, match="act must be 'int8' or 'none'"):
        tops.prepare_qat(_mlp(), act="int4")
    with pytest.raises(ValueError, match="granularity"):
        tops.prepare_qat(_mlp(), granularity="row")
    with pytest.raises(ValueError, match="format"):
        tops.prepare_qat(_mlp(), format="i4")
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., 40\]"):
        model[0](torch.randn(2, 41))


def test_the_qat_example_learns_and_packs_to_the_same_logits():
    """examples/qat_finetune.py, shortened: the loss falls and the packed logits are equal."""
    import os
    import subprocess
    import sys

    pytest.importorskip("transformers")
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "qat_finetune.py")
    out = subprocess.run([sys.executable, script, "--steps", "60"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bit for bit: True" in out.stdout
