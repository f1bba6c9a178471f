"""Fused projections: sibling ternary layers that read the same input (attention's q/k/v, a gated
MLP's gate/up) run as one :class:`TernaryLinear`.

One wide layer streams its weight in one kernel where the separate layers launch one each, and
the activations are quantized once instead of once per layer. The model's code does not change:
``q_proj``, ``k_proj`` and ``v_proj`` become :class:`FusedSlice` modules that return their rows
of the fused layer's output (``qkv_proj``, a new sibling that holds the weights). The first slice
called with an input computes the whole fused output; the others called with the same tensor
return their rows of it; a slice called with any other input computes the fused output for it
(never a wrong answer, only the work of the wider layer).

The fused layer's rows are the members' rows in order, with one scale per row when the members'
scales differ, so each slice's output is exactly what its layer computed alone (bit for bit with
``act="int8"``). The module tree, ``state_dict`` and saved files hold the fused layer;
:func:`ternary_ops.save` records which layers it replaces so :func:`ternary_ops.load` and
:func:`ternary_ops.hf.load_pretrained` rebuild the same tree.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .formats import pack_i2, unpack_i2
from .nn import TernaryLinear

# Sibling layers fused by default, and the name of the fused layer.
DEFAULT_GROUPS: Tuple[Tuple[Tuple[str, ...], str], ...] = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj"),
    (("gate_proj", "up_proj"), "gate_up_proj"),
)


class _Pending:
    """The group's last fused output: ``state`` is ``None`` or ``(input, version, output,
    waiting)``, bit i of ``waiting`` set while slice i has not read ``output`` yet. One tuple,
    replaced whole, so a slice never pairs one call's input with another call's output, even
    when threads share the model."""

    __slots__ = ("state",)

    def __init__(self):
        self.state = None


def _version(x: torch.Tensor) -> int:
    """``x``'s in-place version counter, which tells an in-place change of ``x`` between two
    slices' calls; -1 where there is none: inference tensors, and while compiling (the traced
    graph is functional)."""
    if torch.compiler.is_compiling() or x.is_inference():
        return -1
    return x._version


class FusedSlice(nn.Module):
    """Rows ``[start, stop)`` of the fused layer ``source`` (a sibling module): what the layer
    this module replaced computed. It holds no weights; the fused layer does.

    ``forward(x)`` returns ``fused(x)[..., start:stop]`` (a view) and runs the fused layer at
    most once for the group's slices called with the same ``x``.
    """

    def __init__(self, fused: TernaryLinear, source: str, index: int, start: int, stop: int,
                 pending: _Pending, members: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a child: the parent owns it
        object.__setattr__(self, "_pending", pending)
        self.source, self.index, self.start, self.stop = source, index, start, stop
        self._all = (1 << members) - 1
        self.in_features, self.out_features = fused.in_features, stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pending, bit, version = self._pending, 1 << self.index, _version(x)
        state = pending.state
        if state is not None and state[0] is x and state[1] == version and state[3] & bit:
            y, waiting = state[2], state[3] & ~bit
            pending.state = (x, version, y, waiting) if waiting else None
        else:
            y = self.fused(x)
            pending.state = (x, version, y, self._all & ~bit)
        return y[..., self.start:self.stop]

    @property
    def format(self) -> str:
        return self.fused.format

    @property
    def act(self) -> str:
        return self.fused.act

    @property
    def bias(self) -> Optional[torch.Tensor]:
        """This layer's rows of the fused bias (a view), or ``None``."""
        b = self.fused.bias
        return None if b is None else b[self.start:self.stop]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight of this layer's rows, ``[out_features, in_features]``."""
        return self.fused.dequantize(dtype)[self.start:self.stop]

    def extra_repr(self) -> str:
        return (f"rows {self.start}:{self.stop} of {self.source} (in_features="
                f"{self.in_features}, out_features={self.out_features})")


def _fusable(layers: Sequence[nn.Module]) -> Optional[str]:
    """Why these layers cannot be fused, or ``None`` when they can."""
    first = layers[0]
    for layer in layers:
        if not isinstance(layer, TernaryLinear):
            return f"{type(layer).__name__} is not a TernaryLinear"
        if getattr(layer, "rms_norm", None) is not None:
            return "a layer normalises its own input (rms_norm)"
        if layer.in_features != first.in_features:
            return "in_features differ"
        if (layer.format, layer.act) != (first.format, first.act):
            return "format or act differ"
        if (layer.bias is None) != (first.bias is None):
            return "some layers have a bias and some do not"
        if layer.bias is not None and layer.bias.dtype != first.bias.dtype:
            return "bias dtypes differ"
        if layer.weight.device != first.weight.device:
            return "devices differ"
    return None


def fuse_layers(layers: Sequence[TernaryLinear]) -> TernaryLinear:
    """One :class:`TernaryLinear` whose rows are ``layers``' rows in order (same in_features,
    format, act and bias presence). Its scale is a scalar when all of theirs are one equal
    scalar, else one per row."""
    why = _fusable(layers)
    if why is not None:
        raise ValueError(f"fuse_layers: cannot fuse: {why}")
    first = layers[0]
    with torch.no_grad():
        if first.format == "i2":
            codes = torch.cat([unpack_i2(m.weight, m.out_features) for m in layers])
        else:
            codes = torch.cat([m.weight for m in layers])
        scales = [m.weight_scale for m in layers]
        if all(s.dim() == 0 for s in scales) and all(bool(s == scales[0]) for s in scales):
            scale = scales[0].clone()
        else:
            scale = torch.cat([s.expand(m.out_features) for s, m in zip(scales, layers)])
        bias = (torch.cat([m.bias.detach() for m in layers])
                if first.bias is not None else None)
        fused = TernaryLinear(first.in_features, codes.shape[0], bias=bias is not None,
                              format=first.format, act=first.act, device="meta")
        fused.weight = pack_i2(codes) if first.format == "i2" else codes
        fused.weight_scale = scale
        if bias is not None:
            fused.bias = nn.Parameter(bias, requires_grad=first.bias.requires_grad)
    return fused


def install_fused(parent: nn.Module, fused_name: str, members: Sequence[Tuple[str, int]],
                  fused: TernaryLinear) -> None:
    """Puts ``fused`` on ``parent`` as ``fused_name`` and replaces each member (name, rows) with
    its :class:`FusedSlice`."""
    if sum(rows for _, rows in members) != fused.out_features:
        raise ValueError(f"{fused_name}: members' rows {[r for _, r in members]} do not add up "
                         f"to out_features={fused.out_features}")
    parent.add_module(fused_name, fused)
    pending, start = _Pending(), 0
    for index, (name, rows) in enumerate(members):
        setattr(parent, name, FusedSlice(fused, fused_name, index, start, start + rows, pending,
                                         len(members)))
        start += rows


def fused_members(fused_owner: nn.Module, fused_name: str) -> List[Tuple[str, int]]:
    """``[(member name, rows)]`` of the fused layer ``fused_name`` of ``fused_owner``, in row
    order (empty when no slice of it is there)."""
    slices = [(m.start, name, m.out_features) for name, m in fused_owner.named_children()
              if isinstance(m, FusedSlice) and m.source == fused_name]
    return [(name, rows) for _, name, rows in sorted(slices)]


def fuse_projections(model: nn.Module,
                     groups: Sequence[Tuple[Sequence[str], str]] = DEFAULT_GROUPS
                     ) -> Dict[str, List[str]]:
    """Fuses sibling :class:`TernaryLinear` layers of ``model`` in place: for each ``(members,
    fused_name)`` of ``groups`` and each module that has all the members as ternary children,
    with the same in_features, format, act and bias presence, the members become
    :class:`FusedSlice` modules of one new child ``fused_name``. Default: q/k/v and gate/up.

    Returns ``{qualified fused name: [qualified member names]}``. Groups that do not qualify
    are left as they are. Encoder-decoder models (``config.is_encoder_decoder``) are not fused:
    their cross-attention feeds ``q_proj`` and ``k_proj`` different inputs.
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return {}
    done: Dict[str, List[str]] = {}
    for parent_name, parent in list(model.named_modules()):
        children = dict(parent.named_children())
        for members, fused_name in groups:
            layers = [children.get(m) for m in members]
            if any(layer is None for layer in layers) or fused_name in children:
                continue
            if _fusable(layers) is not None:
                continue
            fused = fuse_layers(layers)
            dot = f"{parent_name}." if parent_name else ""
            fused.layer_name = dot + fused_name
            install_fused(parent, fused_name, [(m, layer.out_features)
                                               for m, layer in zip(members, layers)], fused)
            done[dot + fused_name] = [dot + m for m in members]
    return done
