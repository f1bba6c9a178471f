"""opcheck, autograd (gradcheck) and torch.compile of converted models."""
import pytest
import torch
from torch import nn

import ternary_ops as tops

from helpers import op_call, random_codes, random_scale, to_format

FORMATS = ["i8", "i2"]


def op_args(format, x, codes, scale, bias, act):
    return op_call(format, x, to_format(codes, format), scale, codes.shape[0], bias, act)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("act", ["int8", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(format, act, dtype):
    codes = random_codes(19, 33)
    for x, bias, scale in [(torch.randn(4, 33, dtype=dtype), torch.randn(19, dtype=dtype),
                            random_scale(19, True)),
                           (torch.randn(2, 3, 33, dtype=dtype, requires_grad=True), None,
                            random_scale(19, False)),
                           (torch.randn(1, 33, dtype=dtype), None, random_scale(19, False))]:
        op, args = op_args(format, x, codes, scale, bias, act)
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("format", FORMATS)
def test_gradcheck_act_none(format):
    codes = random_codes(7, 11)
    x = torch.randn(3, 11, dtype=torch.float64).float().requires_grad_()
    bias = torch.randn(7, requires_grad=True)
    scale = random_scale(7, True)
    op, args = op_args(format, x, codes, scale, bias, "none")

    def f(a, b):  # x and bias vary; weight, scale (and out_features) stay fixed
        return op(a, *args[1:-2], b, "none")

    # The op computes in float32, so gradcheck's float64 tolerances are loosened to match.
    with pytest.warns(UserWarning, match="not a double precision"):
        assert torch.autograd.gradcheck(f, (x, bias), eps=1e-2, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("format", FORMATS)
def test_int8_backward_is_straight_through(format):
    codes = random_codes(9, 21)
    scale = random_scale(9, True)
    x = torch.randn(2, 5, 21, requires_grad=True)
    bias = torch.randn(9, requires_grad=True)
    op, args = op_args(format, x, codes, scale, bias, "int8")
    y = op(*args)
    g = torch.randn_like(y)
    y.backward(g)
    dense = codes.float() * scale[:, None]
    torch.testing.assert_close(x.grad, g @ dense)
    torch.testing.assert_close(bias.grad, g.sum((0, 1)))


def test_adapter_finetune_through_frozen_ternary_layer():
    layer = tops.TernaryLinear.from_linear(nn.Linear(16, 8), act="none")
    adapter = nn.Linear(16, 16)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    x, target = torch.randn(32, 16), torch.randn(32, 8)
    losses = []
    for _ in range(20):
        loss = ((layer(adapter(x)) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert layer.weight.grad is None


class Block(nn.Module):
    def __init__(self, d=64, h=4):
        super().__init__()
        self.h = h
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d - 3), nn.Linear(4 * d - 3, d, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.h, d // self.h).unbind(2)
        a = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                       v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab=97, d=64, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x)
        return self.lm_head(x)


def assert_matches_eager(out, ref, act):
    """act="none": float rounding only. act="int8" quantizes each layer's input, so a float
    difference upstream (the compiled graph fuses the norms and residual adds differently) can
    move one activation across a rounding boundary now and then: one quantization step, which
    moves the outputs by about 1e-3 of their range (seen: 2.5e-3 at max |ref| ~2, in a few
    percent of runs). Allow 1% of the range, far below what a wrong graph gives."""
    if act == "none":
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-2 * ref.abs().max().item())


@pytest.mark.parametrize("format,act", [("i2", "int8"), ("i8", "none")])
def test_compile_fullgraph_converted_model(format, act):
    torch._dynamo.reset()
    model = TinyLM().eval()
    summary = tops.convert(model, format=format, act=act)
    assert summary.layers_replaced == 8 and summary.skipped == ["lm_head"]
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        eager = model(ids)
        explanation = torch._dynamo.explain(model)(ids)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(model, fullgraph=True)
        assert_matches_eager(compiled(ids), eager, act)
        # Dynamic shapes: another batch and length reuse the graph without errors.
        compiled_dyn = torch.compile(model, fullgraph=True, dynamic=True)
        for shape in [(1, 5), (3, 17)]:
            ids2 = torch.randint(0, 97, shape)
            assert_matches_eager(compiled_dyn(ids2), model(ids2), act)


@pytest.mark.parametrize("format", FORMATS)
def test_module_calls_skip_autograd_only_where_it_has_nothing_to_record(format, monkeypatch):
    """TernaryLinear calls its op past the dispatcher's autograd step (the Python autograd
    formula) where grad mode is off or nothing requires grad: the same output, no graph. With
    x or the bias requiring grad the op records its backward, and the gradients are the
    straight-through ones."""
    import ternary_ops.nn as tnn

    entered = []
    below = tnn._BELOW_AUTOGRAD

    class Counted:  # the guard, counting the calls that take it
        def __enter__(self):
            entered.append(1)
            self.guard = below()
            return self.guard.__enter__()

        def __exit__(self, *exc):
            return self.guard.__exit__(*exc)

    monkeypatch.setattr(tnn, "_BELOW_AUTOGRAD", Counted)
    codes, scale = random_codes(9, 21), random_scale(9, True)
    layer = tops.TernaryLinear.from_ternary(codes, scale, torch.randn(9), format=format)
    x = torch.randn(2, 3, 21)
    op, args = op_args(format, x, codes, scale, layer.bias.detach(), "int8")
    want = op(*args)
    with torch.no_grad():
        y = layer(x)
    assert len(entered) == 1 and y.grad_fn is None
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    layer.bias.requires_grad_(False)
    y = layer(x)  # grad mode on, nothing requires grad
    assert len(entered) == 2 and y.grad_fn is None
    with torch.inference_mode():  # excludes the autograd step by itself
        layer(x)
    assert len(entered) == 2
    layer.bias.requires_grad_(True)
    xg = x.clone().requires_grad_()
    y = layer(xg)
    assert len(entered) == 2 and y.grad_fn is not None
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(xg.grad, g @ (codes.float() * scale[:, None]))
    torch.testing.assert_close(layer.bias.grad, g.sum((0, 1)))
