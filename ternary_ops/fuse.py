"""Fused projections: sibling ternary layers that read the same input (attention's q/k/v, a gated
MLP's gate/up) run as one :class:`TernaryLinear`. Folded norms: an RMSNorm whose output only
feeds ternary layers becomes part of their op (:func:`fold_norms`).

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

from .formats import pack_i2, ternary_codes
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
    def weight(self) -> torch.Tensor:
        """The fused layer's stored weight, which holds this layer's rows among the group's (its
        device is this layer's; :meth:`dequantize` gives this layer's rows)."""
        return self.fused.weight

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
        if getattr(layer, "rms_norm", None) is not None or layer.input_norm is not None:
            return "a layer normalises its own input (rms_norm or a folded norm)"
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
        codes = torch.cat([ternary_codes(m.weight, m.format, m.out_features) for m in layers])
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
    its :class:`FusedSlice`. ``fused.fused_from`` names the members (the slices call ``fused``
    directly, not through ``parent``: wrapping ``parent.<fused_name>`` would change nothing)."""
    if sum(rows for _, rows in members) != fused.out_features:
        raise ValueError(f"{fused_name}: members' rows {[r for _, r in members]} do not add up "
                         f"to out_features={fused.out_features}")
    parent.add_module(fused_name, fused)
    fused.fused_from = tuple(name for name, _ in members)
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


# ---- folded norms ----------------------------------------------------------------------------

# Model types whose decoder layers feed each norm below to the listed layers only (the names
# relative to the decoder layer), and the norm formula of LlamaRMSNorm. For each norm, the
# first group whose layers are all ternary takes it: the fused layer, else its members.
FOLDABLE_MODEL_TYPES = ("llama", "mistral", "qwen2", "bitnet")
NORM_CONSUMERS: Tuple[Tuple[str, Tuple[Tuple[str, ...], ...]], ...] = (
    ("input_layernorm", (("self_attn.qkv_proj",),
                         ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))),
    ("post_attention_layernorm", (("mlp.gate_up_proj",), ("mlp.gate_proj", "mlp.up_proj"))),
    ("self_attn.attn_sub_norm", (("self_attn.o_proj",),)),  # BitNet
    ("mlp.ffn_sub_norm", (("mlp.down_proj",),)),  # BitNet
)


def llama_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with Hugging Face's arithmetic (``LlamaRMSNorm``): normalise in float32, cast
    back to x's dtype, then multiply by the weight."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class FoldedRMSNorm(nn.Module):
    """An RMSNorm that the ternary layers reading its output apply themselves, inside their
    activation quantization (``torch.ops.ternary.rms_norm_linear_*``): ``forward(x)`` returns
    ``x`` unchanged, and each layer of ``into`` normalises it as it quantizes it. It keeps the
    norm's ``weight`` (same parameter, same state-dict key) and ``variance_epsilon``.

    The layers compute RMSNorm then the plain op up to float rounding: the normalised
    activations are never rounded to the model's dtype (see :mod:`ternary_ops.reference`).
    Anything else that reads this module's output gets the un-normalised ``x``: fold only
    norms whose output feeds nothing but ``into`` (:func:`fold_norms` knows which). On devices
    without a native kernel for those ops (MPS), the layers apply :meth:`apply_norm` and then
    their plain op.
    """

    def __init__(self, weight: nn.Parameter, eps: float, norm_name: str, into: Sequence[str]):
        super().__init__()
        self.weight = weight
        self.variance_epsilon = float(eps)
        self.norm_name, self.into = norm_name, tuple(into)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def apply_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm as the module it replaced computed it, for devices without a native
        ``rms_norm_linear`` kernel."""
        return llama_rms_norm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return (f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, applied by "
                f"{', '.join(self.into)}")


def _foldable_norm(norm: nn.Module, width: int) -> Optional[str]:
    """Why ``norm`` cannot be folded into layers of in_features ``width``, or ``None``."""
    if not type(norm).__name__.endswith("RMSNorm") or isinstance(norm, FoldedRMSNorm):
        return f"{type(norm).__name__} is not an RMSNorm"
    weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (width,):
        return f"its weight is not a [{width}] tensor"
    if not isinstance(eps, (int, float)) or not eps >= 0:
        return "it has no variance_epsilon >= 0"
    return None


def _foldable_layers(layers: Sequence[Optional[nn.Module]]) -> bool:
    first = layers[0]
    return all(isinstance(m, TernaryLinear) and m.act == "int8" and m.input_norm is None
               and getattr(m, "rms_norm", None) is None and m.in_features == first.in_features
               for m in layers)


def fold_norm(model: nn.Module, norm_name: str, layer_names: Sequence[str]) -> FoldedRMSNorm:
    """Folds the RMSNorm ``norm_name`` of ``model`` into the act="int8" ternary layers
    ``layer_names``, which must be all that reads its output: the norm becomes a
    :class:`FoldedRMSNorm` and each layer applies it. Raises ``ValueError`` naming what does
    not fit."""
    norm = model.get_submodule(norm_name)
    layers = []
    for name in layer_names:
        try:
            layers.append(model.get_submodule(name))
        except AttributeError:
            raise ValueError(f"fold_norm: '{norm_name}' feeds '{name}', which is not in the "
                             "model") from None
    if not layers or not _foldable_layers(layers):
        raise ValueError(f"fold_norm: {list(layer_names)} must be act='int8' TernaryLinear "
                         "layers of one width without a norm of their own")
    why = _foldable_norm(norm, layers[0].in_features)
    if why is not None:
        raise ValueError(f"fold_norm: cannot fold '{norm_name}': {why}")
    folded = FoldedRMSNorm(norm.weight, norm.variance_epsilon, norm_name, layer_names)
    model.set_submodule(norm_name, folded)
    for layer in layers:
        object.__setattr__(layer, "input_norm", folded)  # not a child: the norm's parent owns it
    return folded


def fold_norms(model: nn.Module) -> Dict[str, List[str]]:
    """Folds every RMSNorm of a known decoder layout into the ternary layers it feeds (after
    :func:`fuse_projections`, which it does not undo): the input and post-attention norms into
    q/k/v and gate/up, BitNet's sub-norms into o_proj and down_proj. The norm's work and its
    activations' round trip through memory leave the step; on GPUs and in eager mode, so do
    its kernel launches.

    Only models whose ``config.model_type`` is in :data:`FOLDABLE_MODEL_TYPES` are touched,
    and only norms whose readers are all act="int8" ternary layers. Returns ``{norm name:
    [layer names]}``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FOLDABLE_MODEL_TYPES:
        return {}
    done: Dict[str, List[str]] = {}
    for name, module in list(model.named_modules()):
        dot = f"{name}." if name else ""
        for norm_rel, groups in NORM_CONSUMERS:
            try:
                norm = module.get_submodule(norm_rel)
            except AttributeError:
                continue
            for group in groups:
                layers = []
                for rel in group:
                    try:
                        layers.append(module.get_submodule(rel))
                    except AttributeError:
                        layers.append(None)
                if None in layers or not _foldable_layers(layers):
                    continue
                if _foldable_norm(norm, layers[0].in_features) is None:
                    names = [dot + rel for rel in group]
                    fold_norm(model, dot + norm_rel, names)
                    done[dot + norm_rel] = names
                break
    return done
