"""``TernaryLinear``: a drop-in replacement for ``nn.Linear`` with ternary weights."""
from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch import nn

from . import ops  # noqa: F401  (registers fake kernels and autograd)
from .formats import (GRANULARITIES, I2_ZERO_BYTE, check_features, check_format, dequantize,
                      pack_i2, packed_rows, quantize, quantize_q8, validate_q8, validate_weight)
from .reference import ACT_MODES


def _check_act(act: str) -> str:
    if act not in ACT_MODES:
        raise ValueError(f"act must be one of {ACT_MODES}, got {act!r}")
    return act


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


# Devices with native kernels for the rms_norm_linear ops (a layer's folded norm).
_FOLDED_NORM_DEVICES = ("cpu", "cuda")

_BELOW_AUTOGRAD = getattr(torch._C, "_AutoDispatchBelowAutograd", None)


def _nothing_to_record(args) -> bool:
    """Whether autograd has nothing to record for an op called on args: grad mode is off, or no
    tensor among them requires grad (then its output requires none either)."""
    return not torch.is_grad_enabled() or not any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _run(op, *args):
    """``op(*args)``, past the dispatcher's autograd step where it has nothing to record. That
    step is the ops' autograd formula, registered from Python: in eager inference under
    ``torch.no_grad()`` (as ``generate`` runs) it is a large share of a batch-1 call's host time.
    ``torch.inference_mode`` skips that step itself; torch.compile traces the op as it is."""
    if (_BELOW_AUTOGRAD is not None and not torch.compiler.is_compiling()
            and not torch.is_inference_mode_enabled() and _nothing_to_record(args)):
        with _BELOW_AUTOGRAD():
            return op(*args)
    return op(*args)


class _PackedWeight(nn.Module):
    """What the modules with an integer ``weight`` and a float32 ``weight_scale`` buffer share."""

    def weight_bytes(self) -> int:
        """Bytes of the stored weight and scale (what the module holds instead of a dense
        weight)."""
        return (self.weight.numel() * self.weight.element_size()
                + self.weight_scale.numel() * self.weight_scale.element_size())

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() would cast the float32 scale; keep it float32 and let only
        # the device follow (the weight is integer, so casts never touch it).
        scale = self.weight_scale
        super()._apply(lambda t: _convert_once(fn, t, "", fn), recurse)
        if self.weight_scale.dtype != torch.float32:
            device = self.weight_scale.device
            self.weight_scale = _convert_once(fn, scale, "float32",
                                              lambda s: s.to(device=device))
        return self


# Buffers that two modules share (a tied head and embedding kept at int8) must stay one tensor
# through Module.to() / .cuda(), which converts each module's buffers on its own: within one
# conversion (one `fn`), a tensor converted before gives the same result again. Weak references
# only: the memo never keeps a tensor alive.
_converted: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _convert_once(fn, t: torch.Tensor, tag: str, convert):
    try:
        memo = _converted.setdefault(fn, {})
    except TypeError:  # an fn that takes no weak reference: convert without sharing
        return convert(t)
    hit = memo.get((id(t), tag))
    out = hit[1]() if hit is not None and hit[0]() is t else None
    if out is None:
        out = convert(t)
        memo[(id(t), tag)] = (weakref.ref(t), weakref.ref(out))
    return out


class TernaryLinear(_PackedWeight):
    """Linear layer ``y = s * (a @ T.T) + bias`` with ternary weights ``T`` in {-1, 0, +1}.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: learnable bias (a ``Parameter``, trainable like ``nn.Linear``'s).
        format: ``"i2"`` (2-bit packed, 1/8 of bf16's bytes) or ``"i8"`` (int8 direct, no
            decode, 1/2 of bf16's bytes).
        act: ``"int8"`` (per-row int8 activations, integer dot: BitNet W1.58A8) or ``"none"``
            (float activations, exact w.r.t. the ternary weights).
        granularity: ``"tensor"`` (one scale) or ``"channel"`` (one scale per output row).
        dtype: dtype of ``bias``; the output follows the input's dtype.

    Buffers: ``weight`` (``uint8 [ceil(N/4), K]`` for i2, ``int8 [N, K]`` for i8) and
    ``weight_scale`` (float32 ``[]`` or ``[N]``; kept in float32 by ``.to(dtype)``/``.half()``).
    A new layer's weights are all zero; use :meth:`from_linear` or load a state dict.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 format: str = "i2", act: str = "int8", granularity: str = "tensor",
                 device=None, dtype=None):
        super().__init__()
        in_features, out_features = check_features(in_features, out_features,
                                                   check_format(format), type(self).__name__)
        self.in_features = in_features
        self.out_features = out_features
        self.format = check_format(format)
        self.act = _check_act(act)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
        if format == "i2":
            weight = torch.full((packed_rows(out_features), in_features), I2_ZERO_BYTE,
                                dtype=torch.uint8, device=device)
        else:
            weight = torch.zeros(out_features, in_features, dtype=torch.int8, device=device)
        self.register_buffer("weight", weight)
        scale_shape = () if granularity == "tensor" else (out_features,)
        self.register_buffer("weight_scale",
                             torch.ones(scale_shape, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    @property
    def granularity(self) -> str:
        return "tensor" if self.weight_scale.dim() == 0 else "channel"

    @classmethod
    def from_linear(cls, linear: nn.Linear, format: str = "i2", act: str = "int8",
                    granularity: str = "tensor") -> "TernaryLinear":
        """Quantizes ``linear.weight`` (absmean) into a new layer on the same device."""
        return cls.from_dense(linear.weight, linear.bias, format, act, granularity)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   format: str = "i2", act: str = "int8",
                   granularity: str = "tensor") -> "TernaryLinear":
        """Quantizes a dense ``weight [out, in]`` (absmean) into a new layer on its device."""
        codes, scale = quantize(weight, granularity)
        layer = cls.from_ternary(codes, scale, bias, format=format, act=act)
        if bias is not None:
            layer.bias.requires_grad_(bias.requires_grad)
        return layer

    @classmethod
    def from_ternary(cls, codes: torch.Tensor, scale: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, format: str = "i2",
                     act: str = "int8") -> "TernaryLinear":
        """Builds a layer from ternary int8 codes ``[N, K]`` and their scale ``[]`` or ``[N]``."""
        validate_weight(codes, "i8")
        n, k = codes.shape
        scale = scale.detach().to(device=codes.device, dtype=torch.float32)
        if not (scale.numel() == 1 or scale.shape == (n,)):
            raise ValueError(f"scale must be a scalar or have shape [{n}], got "
                             f"{list(scale.shape)}")
        layer = cls(k, n, bias=bias is not None, format=format, act=act,
                    granularity="tensor" if scale.numel() == 1 else "channel",
                    device=torch.device("meta"))
        layer.weight = pack_i2(codes) if format == "i2" else codes.clone()
        layer.weight_scale = scale.reshape(()) if scale.numel() == 1 else scale
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone())
        return layer

    # The layer's qualified name in its model, for error messages; set by convert(), load(),
    # ternary_ops.hf's loaders, or by hand.
    layer_name: Optional[str] = None

    def _wrong_width(self, x: torch.Tensor) -> ValueError:
        name = f" '{self.layer_name}'" if self.layer_name else ""
        width = f"width {x.shape[-1]}" if x.dim() else "no dimensions"
        return ValueError(f"{type(self).__name__}{name} (in_features={self.in_features}, "
                          f"out_features={self.out_features}): x has {width} (shape "
                          f"{list(x.shape)}); its last dimension must be in_features = "
                          f"{self.in_features}")

    # The RMSNorm folded into this layer (a ternary_ops.fuse.FoldedRMSNorm its parent owns), or
    # None: forward then normalises x as it quantizes it (the rms_norm_linear ops).
    input_norm: Optional[nn.Module] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise self._wrong_width(x)
        norm = self.input_norm
        if norm is not None and x.device.type not in _FOLDED_NORM_DEVICES:
            # No native rms_norm_linear kernel here (MPS): the norm's own arithmetic, then the
            # plain op, rather than the reference's slow path.
            x = norm.apply_norm(x)
        elif norm is not None:
            if self.format == "i2":
                return _run(torch.ops.ternary.rms_norm_linear_i2, x, norm.weight,
                            norm.variance_epsilon, self.weight, self.weight_scale,
                            self.out_features, self.bias)
            return _run(torch.ops.ternary.rms_norm_linear_i8, x, norm.weight,
                        norm.variance_epsilon, self.weight, self.weight_scale, self.bias)
        if self.format == "i2":
            return _run(torch.ops.ternary.linear_i2, x, self.weight, self.weight_scale,
                        self.out_features, self.bias, self.act)
        return _run(torch.ops.ternary.linear_i8, x, self.weight, self.weight_scale, self.bias,
                    self.act)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight ``s * T`` as ``[out_features, in_features]``."""
        return dequantize(self.weight, self.weight_scale, self.format, self.out_features, dtype)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format={self.format}, act={self.act}, "
                f"granularity={self.granularity}, weight_memory={_human_bytes(self.weight_bytes())}"
                + (f", input_norm={self.input_norm.norm_name}" if self.input_norm is not None
                   else ""))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Validate codes before they are copied in, and accept either scale granularity. The
        # caller's dict is never modified: adjusted entries go into a shallow copy.
        state_dict = dict(state_dict)
        wkey, skey = prefix + "weight", prefix + "weight_scale"
        if wkey in state_dict:
            w = state_dict[wkey]
            if w.dtype != self.weight.dtype or w.shape != self.weight.shape:
                error_msgs.append(
                    f"{wkey}: expected {self.format} weight {self.weight.dtype} "
                    f"{list(self.weight.shape)} for in_features={self.in_features}, "
                    f"out_features={self.out_features}, got {w.dtype} {list(w.shape)}")
                return
            try:
                validate_weight(w, self.format, self.out_features)
            except ValueError as e:
                error_msgs.append(f"{wkey}: {e}")
                return
        if skey in state_dict:
            s = state_dict[skey]
            if s.numel() == 1 and s.dim() <= 1:
                self.weight_scale = torch.ones((), dtype=torch.float32,
                                               device=self.weight_scale.device)
                state_dict[skey] = s.reshape(())
            elif s.shape == (self.out_features,):
                self.weight_scale = torch.ones(self.out_features, dtype=torch.float32,
                                               device=self.weight_scale.device)
            else:
                error_msgs.append(f"{skey}: expected shape [] or [{self.out_features}], got "
                                  f"{list(s.shape)}")
                return
            state_dict[skey] = state_dict[skey].float()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _float_dtype_after(fn, dtype: torch.dtype) -> torch.dtype:
    # What Module._apply's fn does to a floating tensor of `dtype` (a .to(dtype) / .half() cast,
    # or a device move that keeps it).
    out = fn(torch.empty(0, dtype=dtype))
    return out.dtype if out.is_floating_point() else dtype


class _Q8Weight(_PackedWeight):
    """The q8 modules: a state dict entry is validated before anything is copied in."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if not _check_q8_entries(self, state_dict, prefix, error_msgs):
            return  # nothing is copied from a bad entry
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight (or table) ``s[:, None] * Q``, one scale per row."""
        return (self.weight.float() * self.weight_scale[:, None]).to(dtype)


class Int8Linear(_Q8Weight):
    """Linear layer ``y = s * (a @ Q.T) + bias`` with int8 weights ``Q`` in [-127, 127] and one
    float32 scale per output row (format q8): a layer kept at 8 bits, such as the output head of
    a ternary model, at half of bf16's bytes.

    Args:
        in_features, out_features, bias, dtype: as ``nn.Linear`` (``dtype`` is the bias's).
        act: ``"int8"`` (per-row int8 activations and an exact integer dot, as
            :class:`TernaryLinear`) or ``"none"`` (float activations).

    Buffers: ``weight`` (int8 ``[out_features, in_features]``) and ``weight_scale`` (float32
    ``[out_features]``, kept in float32 by ``.to(dtype)``). Build one with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 act: str = "int8", device=None, dtype=None):
        super().__init__()
        in_features, out_features = check_features(in_features, out_features, "i8",
                                                   type(self).__name__)
        self.in_features = in_features
        self.out_features = out_features
        self.act = _check_act(act)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8,
                                                   device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32,
                                                        device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    layer_name: Optional[str] = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, act: str = "int8") -> "Int8Linear":
        """Quantizes ``linear.weight`` (per-row absmax, :func:`quantize_q8`) into a new layer."""
        return cls.from_dense(linear.weight, linear.bias, act)

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   act: str = "int8") -> "Int8Linear":
        """Quantizes a dense ``weight [out, in]`` into a new layer on its device."""
        codes, scale = quantize_q8(weight)
        n, k = codes.shape
        layer = cls(k, n, bias=bias is not None, act=act, device=torch.device("meta"))
        layer.weight, layer.weight_scale = codes, scale
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise TernaryLinear._wrong_width(self, x)
        return _run(torch.ops.ternary.linear_q8, x, self.weight, self.weight_scale, self.bias,
                    self.act)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, format=q8, act={self.act}, "
                f"weight_memory={_human_bytes(self.weight_bytes())}")


def _check_q8_entries(module, state_dict, prefix, error_msgs) -> bool:
    """Validates the q8 weight and scale entries of ``state_dict``; False (with messages in
    ``error_msgs``) when one is bad."""
    count = len(error_msgs)
    wkey, skey = prefix + "weight", prefix + "weight_scale"
    if wkey in state_dict:
        w = state_dict[wkey]
        if w.dtype != torch.int8 or w.shape != module.weight.shape:
            error_msgs.append(f"{wkey}: expected q8 weight torch.int8 {list(module.weight.shape)}, "
                              f"got {w.dtype} {list(w.shape)}")
        else:
            try:
                validate_q8(w)
            except ValueError as e:
                error_msgs.append(f"{wkey}: {e}")
    if skey in state_dict:
        s = state_dict[skey]
        if s.shape != module.weight_scale.shape or not s.is_floating_point():
            error_msgs.append(f"{skey}: expected a float tensor of shape "
                              f"{list(module.weight_scale.shape)}, got {s.dtype} {list(s.shape)}")
    return len(error_msgs) == count


class Int8Embedding(_Q8Weight):
    """``nn.Embedding`` with int8 rows in [-127, 127] and one float32 scale per row (format q8):
    half of bf16's bytes. A lookup returns ``(Q[ids] * s[ids]).to(dtype)``; ``dtype`` is the
    embedding's original dtype and follows ``.to(dtype)`` / ``.half()`` like a float weight."""

    def __init__(self, num_embeddings: int, embedding_dim: int,
                 padding_idx: Optional[int] = None, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = padding_idx
        self.dtype = dtype or torch.get_default_dtype()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim,
                                                   dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, dtype=torch.float32,
                                                        device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> "Int8Embedding":
        """Quantizes ``embedding.weight`` per row into a new module on the same device."""
        codes, scale = quantize_q8(embedding.weight)
        return cls.from_q8(codes, scale, embedding.padding_idx, dtype=embedding.weight.dtype)

    @classmethod
    def from_q8(cls, weight: torch.Tensor, weight_scale: torch.Tensor,
                padding_idx: Optional[int] = None,
                dtype: Optional[torch.dtype] = None) -> "Int8Embedding":
        """A module over existing q8 rows (int8 ``[num, dim]``, float32 scales ``[num]``),
        without a copy: the tensors stay shared with whatever else holds them (such as the
        :class:`Int8Linear` head of a model whose head and embedding were tied)."""
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"Int8Embedding.from_q8: weight must be a 2-D torch.int8 tensor, "
                             f"got {weight.dtype} {list(weight.shape)}")
        if weight_scale.dtype != torch.float32 or tuple(weight_scale.shape) != weight.shape[:1]:
            raise ValueError(f"Int8Embedding.from_q8: weight_scale must be float32 "
                             f"[{weight.shape[0]}], got {weight_scale.dtype} "
                             f"{list(weight_scale.shape)}")
        if weight.numel() and int(weight.min()) == -128:  # a reduction, no mask of the table
            validate_q8(weight)
        layer = cls(weight.shape[0], weight.shape[1], padding_idx, device="meta", dtype=dtype)
        layer.weight, layer.weight_scale = weight, weight_scale
        return layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Int8Embedding: ids must be int64 or int32, got {ids.dtype}")
        rows = self.weight[ids].float() * self.weight_scale[ids].unsqueeze(-1)
        return rows.to(self.dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, format=q8, dtype={self.dtype}, "
                f"weight_memory={_human_bytes(self.weight_bytes())}")

    def _apply(self, fn, recurse=True):
        self.dtype = _float_dtype_after(fn, self.dtype)
        return super()._apply(fn, recurse)

