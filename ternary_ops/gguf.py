"""GGUF files in and out: :func:`load_gguf` reads the ternary tensors of a GGUF file into
:class:`TernaryLinear` layers of a Hugging Face Llama-family model, :func:`save_gguf` writes a
converted Llama model that llama.cpp loads.

``gguf`` (the GGUF package of llama.cpp) is an optional dependency (``pip install
'ternary-ops[gguf]'``), imported only when a function here runs.

Ternary GGUF types, decoded straight to codes (``code = w + 1``, 0 = -1, 1 = 0, 2 = +1, the
code of the ``i2`` format) and scales, with no dense weight in between:

* ``TQ2_0`` (llama.cpp, ``block_tq2_0``): 256 weights in 66 bytes, ``qs[64]`` then the fp16
  scale ``d``. Weight ``128 g + 32 l + m`` of a block is bits ``2l, 2l+1`` of ``qs[32 g + m]``.
  Code 3 is invalid.
* ``TQ1_0`` (llama.cpp, ``block_tq1_0``): 256 weights in 54 bytes, ``qs[48]``, ``qh[4]``, then
  fp16 ``d``. A byte holds five codes (four in ``qh``, whose fifth trit is 0) as the base-3
  number ``v`` of its codes, first code most significant, stored as ``ceil(v * 256 / 243)``;
  code ``n`` of byte ``q`` is ``((q * 3**n) mod 256) * 3 >> 8``. Code ``n`` of ``qs[m]`` is
  weight ``32 n + m`` (m < 32), of ``qs[32 + m]`` weight ``160 + 16 n + m`` (m < 16), of
  ``qh[j]`` weight ``240 + 4 n + j``.
* ``I2_S`` (bitnet.cpp's ggml, GGML type 36; the layout of its x86 build, ``QK_I2_S = 128``
  with ``ACT_PARALLEL``, ``quantize_i2_s`` in ``src/ggml-bitnet-mad.cpp``): the tensor's
  weights in row-major order, in blocks of 128 stored in 32 bytes, weight ``32 g + m`` of a
  block in bits ``6 - 2g, 7 - 2g`` of byte ``m``; then one float32 scale for the whole tensor,
  in a 32-byte tail (``N * K / 4 + 32`` bytes in all). Its ARM build packs blocks of 64 into
  16 bytes and writes the same type id, so a file does not say which: only the x86 layout is
  read (``i2_s_layout="x86"``).

Scales: TQ1_0 and TQ2_0 hold one fp16 scale per 256-weight block. A layer keeps one float32
scale per tensor or per row, so a tensor loads only where every block of a row has the same
scale (blocks whose codes are all zero do not count: their scale multiplies nothing); then the
load is exact. Per-group scales are refused with a ``ValueError``. Writing needs each scale
exact in fp16 (``round_scales=True`` rounds them, with a warning giving the largest change).

Names and rows (``convert_hf_to_gguf.py``'s mapping): ``token_embd`` / ``output_norm`` /
``output`` are ``model.embed_tokens`` / ``model.norm`` / ``lm_head``; ``blk.N.attn_norm``,
``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_norm``, ``ffn_gate``, ``ffn_up``,
``ffn_down`` (and BitNet's ``attn_sub_norm``, ``ffn_sub_norm``) are the layer's
``input_layernorm``, ``self_attn.{q,k,v,o}_proj``, ``post_attention_layernorm``,
``mlp.{gate,up,down}_proj`` (``self_attn.attn_sub_norm``, ``mlp.ffn_sub_norm``). For the
``llama`` architecture (llama.cpp's rope on adjacent pairs) the rows of ``attn_q`` / ``attn_k``
are permuted within each head (``LlamaModel.permute``); loading undoes it, saving applies it.
"""
from __future__ import annotations

import functools
import math
import os
import re
import warnings
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .convert import untie_config
from .formats import GRANULARITIES, check_format, ternary_codes
from .fuse import FoldedRMSNorm, FusedSlice, fuse_projections
from .fuse import fold_norms as fold_norms_into_layers
from .io import write_atomic
from .memory import use_huge_pages
from .nn import Int8Embedding, Int8Linear, TernaryLinear, _check_act

# GGML type ids. I2_S is bitnet.cpp's (its fork of ggml); the gguf package does not know it.
TQ1_0, TQ2_0, I2_S = 34, 35, 36
TYPE_NAMES = {TQ1_0: "TQ1_0", TQ2_0: "TQ2_0", I2_S: "I2_S"}
QK_K = 256                         # weights per TQ1_0 / TQ2_0 block
BLOCK_BYTES = {TQ2_0: 64 + 2, TQ1_0: 48 + 4 + 2}
I2_S_BLOCK, I2_S_BLOCK_BYTES = 128, 32   # x86 layout
I2_S_TAIL = 32                     # bytes after the codes; the float32 scale is the first four
I2_S_LAYOUTS = ("x86",)
_POW3 = (1, 3, 9, 27, 81)
# llama.cpp file types (llama_ftype) of a model whose linear layers are all one ternary type
_FILE_TYPES = {TQ1_0: 36, TQ2_0: 37}

# Architectures: Hugging Face config class, whether q/k rows are permuted, FFN activation.
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", True, "silu"),
    "bitnet": ("BitNetConfig", "BitNetForCausalLM", False, "silu"),          # llama.cpp
    "bitnet-b1.58": ("BitNetConfig", "BitNetForCausalLM", False, "relu2"),   # bitnet.cpp
}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
                 "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}
_PERMUTED = ("self_attn.q_proj", "self_attn.k_proj")


def require_gguf():
    try:
        import gguf
    except ImportError as e:
        raise ImportError("ternary_ops.gguf needs the 'gguf' package: "
                          "pip install 'ternary-ops[gguf]'") from e
    return gguf


# ---- the ternary block codecs (uint8 tensors; codes 0..2 = w + 1) ---------------------------

def decode_tq2_0(blocks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """TQ2_0 blocks ``uint8 [B, 66]`` -> codes ``uint8 [B, 256]`` (0..3) and ``d float32 [B]``."""
    qs = blocks[:, :64].reshape(-1, 2, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)
    codes = ((qs >> shifts) & 3).reshape(-1, QK_K)
    return codes, _fp16(blocks[:, 64:66])


def encode_tq2_0(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Codes ``uint8 [B, 256]`` (0..2) and fp16 scales ``[B]`` -> TQ2_0 blocks ``uint8 [B, 66]``."""
    c = codes.reshape(-1, 2, 4, 32)
    qs = c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)
    return torch.cat([qs.reshape(-1, 64), _fp16_bytes(d)], dim=1)


def _trits(q: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` codes (most significant first) of bytes ``q [B, L]``:
    ``uint8 [B, count, L]``."""
    q = q.to(torch.int16)  # q * 81 <= 20655
    return torch.stack([((((q * _POW3[n]) & 0xFF) * 3) >> 8).to(torch.uint8)
                        for n in range(count)], dim=1)


def decode_tq1_0(blocks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """TQ1_0 blocks ``uint8 [B, 54]`` -> codes ``uint8 [B, 256]`` (0..2) and ``d float32 [B]``."""
    parts = (_trits(blocks[:, :32], 5), _trits(blocks[:, 32:48], 5), _trits(blocks[:, 48:52], 4))
    codes = torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)
    return codes, _fp16(blocks[:, 52:54])


def _pack_trits(c: torch.Tensor) -> torch.Tensor:
    """Codes ``[B, n, L]`` (n <= 5, most significant first) -> bytes ``[B, L]``."""
    v = sum(c[:, n].to(torch.int32) * _POW3[4 - n] for n in range(c.shape[1]))
    return ((v * 256 + 242) // 243).to(torch.uint8)  # ceil(v * 256 / 243)


def encode_tq1_0(codes: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Codes ``uint8 [B, 256]`` (0..2) and fp16 scales ``[B]`` -> TQ1_0 blocks ``uint8 [B, 54]``."""
    b = codes.shape[0]
    qs0 = _pack_trits(codes[:, :160].reshape(b, 5, 32))
    qs1 = _pack_trits(codes[:, 160:240].reshape(b, 5, 16))
    qh = _pack_trits(codes[:, 240:].reshape(b, 4, 4))
    return torch.cat([qs0, qs1, qh, _fp16_bytes(d)], dim=1)


def decode_i2_s(data: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """An x86 I2_S tensor's bytes (``n / 4 + 32``) -> codes ``uint8 [n]`` (0..3) and its
    float32 scale."""
    packed = data[:n // 4].reshape(-1, 1, I2_S_BLOCK_BYTES)
    shifts = torch.tensor([6, 4, 2, 0], dtype=torch.uint8).reshape(1, 4, 1)
    codes = ((packed >> shifts) & 3).reshape(-1)
    return codes, data[n // 4:n // 4 + 4].clone().view(torch.float32).reshape(())


def _fp16(two_bytes: torch.Tensor) -> torch.Tensor:
    return two_bytes.contiguous().view(torch.float16).reshape(-1).float()


def _fp16_bytes(d: torch.Tensor) -> torch.Tensor:
    return d.to(torch.float16).reshape(-1, 1).view(torch.uint8)


_DECODERS = {TQ2_0: decode_tq2_0, TQ1_0: decode_tq1_0}
_ENCODERS = {TQ2_0: encode_tq2_0, TQ1_0: encode_tq1_0}
_QTYPES = {"TQ2_0": TQ2_0, "TQ1_0": TQ1_0}


# ---- reading a file -------------------------------------------------------------------------

class GGUFTensor(NamedTuple):
    name: str
    type: int              # GGML type id
    shape: Tuple[int, ...]  # torch order: [N, K] for a weight (GGUF lists K first)
    offset: int            # of its data in the file
    nbytes: Optional[int]  # None for a type this module cannot size


@functools.lru_cache(maxsize=None)
def _reader_class():
    gguf = require_gguf()

    class Reader(gguf.GGUFReader):
        """gguf's reader for the header and metadata; the tensor table is ours, so a type
        gguf does not know (I2_S) gets a clear error, or is read, instead of stopping the
        whole file."""

        def _build_tensors(self, start_offs, fields):
            self.tensors, self.table = [], {}
            for field in fields:
                _, name, _, dims, raw_type, offset = field.parts
                name = bytes(name).decode("utf-8")
                if name in self.table:
                    raise ValueError(f"tensor '{name}' appears twice")
                shape = tuple(int(x) for x in reversed(dims.tolist()))
                qtype = int(raw_type[0])
                self.table[name] = GGUFTensor(name, qtype, shape,
                                              int(start_offs + offset[0]),
                                              _nbytes(gguf, qtype, math.prod(shape)))
    return Reader


def _nbytes(gguf, qtype: int, n: int) -> Optional[int]:
    if qtype == I2_S:
        return n // 4 + I2_S_TAIL
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
        return None
    return n // block * size if n % block == 0 else None


def _type_name(qtype: int) -> str:
    if qtype in TYPE_NAMES:
        return TYPE_NAMES[qtype]
    try:
        return require_gguf().GGMLQuantizationType(qtype).name
    except ValueError:
        return f"unknown type {qtype}"


class GGUFFile:
    """A GGUF file's metadata (``metadata``: key -> value) and tensor table (``tensors``: name
    -> :class:`GGUFTensor`), with the bytes of each tensor on request."""

    def __init__(self, path: Union[str, os.PathLike]):
        require_gguf()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._reader = _reader_class()(self.path)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{self.path}: not a GGUF file, or a damaged one ({e})") from None
        self.metadata = {name: _field_value(f) for name, f in self._reader.fields.items()
                         if not name.startswith("GGUF.")}
        self.tensors: Dict[str, GGUFTensor] = self._reader.table

    def where(self, name: str) -> str:
        t = self.tensors[name]
        return f"{self.path}: tensor '{name}' ({_type_name(t.type)}, {list(t.shape)})"

    def data(self, name: str) -> torch.Tensor:
        """The tensor's bytes, ``uint8 [nbytes]`` (a copy)."""
        t = self.tensors[name]
        if t.nbytes is None:
            raise ValueError(f"{self.where(name)}: GGML type {_type_name(t.type)} is not "
                             "supported (or its size does not divide into its blocks)")
        end = t.offset + t.nbytes
        if end > len(self._reader.data):
            raise ValueError(f"{self.where(name)}: its data ends at byte {end}, past the end "
                             f"of the file ({len(self._reader.data)} bytes): truncated?")
        return torch.from_numpy(np.array(self._reader.data[t.offset:end]))


def _field_value(field) -> Any:
    gguf = require_gguf()
    kind = gguf.GGUFValueType

    def item(i, t):
        part = field.parts[i]
        return bytes(part).decode("utf-8") if t == kind.STRING else part.tolist()[0]

    if field.types and field.types[0] == kind.ARRAY:
        return [item(i, field.types[-1]) for i in field.data]
    return item(field.data[0], field.types[0]) if field.types else None


def gguf_vocab(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The tokenizer metadata (``tokenizer.*`` keys) of a GGUF file, to write again with
    ``save_gguf(..., vocab=...)``."""
    return {k: v for k, v in GGUFFile(path).metadata.items() if k.startswith("tokenizer.")}


# ---- ternary tensors to codes and scales ----------------------------------------------------

def _ternary_tensor(f: GGUFFile, name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Codes ``uint8 [N, K]`` (0..2) and scales ``float32 [N, blocks per row]`` of a ternary
    tensor (I2_S: ``[1, 1]``)."""
    t, where = f.tensors[name], f.where(name)
    if len(t.shape) != 2:
        raise ValueError(f"{where}: expected a 2-D weight, got {len(t.shape)}-D")
    n, k = t.shape
    data = f.data(name)
    if t.type == I2_S:
        if (n * k) % I2_S_BLOCK:
            raise ValueError(f"{where}: expected a multiple of {I2_S_BLOCK} weights for I2_S, "
                             f"got {n * k}")
        codes, scale = decode_i2_s(data, n * k)
        scales = scale.reshape(1, 1)
    else:
        if k % QK_K:
            raise ValueError(f"{where}: expected a row length that is a multiple of {QK_K}, "
                             f"got {k}")
        codes, d = _DECODERS[t.type](data.reshape(-1, BLOCK_BYTES[t.type]))
        scales = d.reshape(n, k // QK_K)
    codes = codes.reshape(n, k)
    if bool((codes == 3).any()):
        first = int((codes.reshape(-1) == 3).nonzero()[0])
        raise ValueError(f"{where}: invalid code 3 (expected 0, 1 or 2: -1, 0, +1) at "
                         f"weight [{first // k}, {first % k}]")
    return codes, scales


def _row_scales(where: str, codes: torch.Tensor, scales: torch.Tensor,
                granularity: Optional[str]) -> torch.Tensor:
    """One scale per row (``[N]``) or per tensor (``[]``) from per-block scales, where that is
    exact; ``ValueError`` otherwise."""
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(f"{where}: a block scale is not finite (expected finite scales)")
    n, blocks = scales.shape
    if blocks > 1:
        nonzero = (codes.reshape(n, blocks, -1) != 1).any(dim=2)
        counts = nonzero | ~nonzero.any(dim=1, keepdim=True)  # a row of zeros: all its blocks
        lo = torch.where(counts, scales, torch.inf).amin(dim=1)
        hi = torch.where(counts, scales, -torch.inf).amax(dim=1)
        if bool((lo != hi).any()):
            row = int((lo != hi).nonzero()[0])
            spread = scales[counts]
            raise ValueError(
                f"{where}: the blocks of a row have different scales (row {row}: min "
                f"{float(lo[row])}, max {float(hi[row])}; {int(torch.unique(spread).numel())} "
                f"distinct over the tensor, min {float(spread.min())}, max "
                f"{float(spread.max())}); per-group scales are not supported: a TernaryLinear "
                "keeps one scale per row or per tensor")
        scales = lo
    rows = scales.reshape(-1).repeat(n) if scales.numel() == 1 else scales.reshape(n)
    uniform = bool((rows == rows[0]).all())
    if granularity == "channel":
        return rows.clone()
    if granularity == "tensor" and not uniform:
        raise ValueError(f"{where}: granularity='tensor' but its rows have different scales "
                         f"(min {float(rows.min())}, max {float(rows.max())})")
    return rows[0].clone() if uniform else rows.clone()


def read_ternary(file: Union[str, os.PathLike, "GGUFFile"], name: str,
                 granularity: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 [N, K], scale float32 [] or [N])`` of the TQ1_0, TQ2_0 or I2_S tensor
    ``name`` (rows as stored: no rope permutation is undone). ``granularity``: ``None`` (one
    scale where all rows share it), ``"tensor"`` or ``"channel"``."""
    f = file if isinstance(file, GGUFFile) else GGUFFile(file)
    if name not in f.tensors:
        raise KeyError(f"{f.path}: no tensor '{name}'")
    if f.tensors[name].type not in TYPE_NAMES:
        raise ValueError(f"{f.where(name)}: expected one of {sorted(TYPE_NAMES.values())}")
    codes, scales = _ternary_tensor(f, name)
    scale = _row_scales(f.where(name), codes, scales, granularity)
    return codes.to(torch.int8) - 1, scale


def ternary_bytes(codes: torch.Tensor, scale: torch.Tensor, type: str = "TQ2_0",
                  round_scales: bool = False, name: str = "ternary_bytes") -> np.ndarray:
    """The GGUF data of ternary codes ``int8 [N, K]`` with scale ``[]`` or ``[N]`` as
    ``type`` (``"TQ2_0"`` or ``"TQ1_0"``): ``uint8 [N, K / 256 * block bytes]``, every block's
    ``d`` its row's scale. ``K`` must be a multiple of 256, and each scale exact in fp16
    unless ``round_scales`` (see :func:`save_gguf`); ``name`` starts error messages."""
    qtype = _QTYPES.get(type)
    if qtype is None:
        raise ValueError(f"type must be one of {sorted(_QTYPES)}, got {type!r}")
    n, k = codes.shape
    if k % QK_K:
        raise ValueError(f"{name}: in_features={k}; {type} needs a multiple of {QK_K} (its "
                         "block size)")
    d = _fp16_scale(name, scale, round_scales).expand(n)
    blocks = (codes.cpu() + 1).to(torch.uint8).reshape(-1, QK_K)
    return _ENCODERS[qtype](blocks, d.repeat_interleave(k // QK_K)).reshape(n, -1).numpy()


def _permute(x: torch.Tensor, heads: int, inverse: bool = False) -> torch.Tensor:
    """``convert_hf_to_gguf.py``'s ``LlamaModel.permute`` of rows (and its inverse): within
    each head, rows ``[first half | second half]`` become interleaved pairs."""
    if x.dim() == 0:
        return x
    n = x.shape[0]
    if n % (2 * heads):
        raise ValueError(f"cannot permute {n} rows for rope: expected a multiple of "
                         f"2 * {heads} heads")
    shape = (heads, n // heads // 2, 2) if inverse else (heads, 2, n // heads // 2)
    return x.reshape(*shape, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape).contiguous()


def _dense_tensor(f: GGUFFile, name: str, dtype: torch.dtype) -> torch.Tensor:
    """Any tensor as a float tensor of ``dtype``: F32 / F16 / BF16 as they are, ternary types
    as ``codes * scale``, every other type through gguf's dequantizer."""
    gguf = require_gguf()
    t = f.tensors[name]
    raw = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}.get(t.type)
    if raw is not None:
        return f.data(name).view(raw).reshape(t.shape).to(dtype)
    if t.type in TYPE_NAMES:
        codes, scales = _ternary_tensor(f, name)
        n, k = codes.shape
        w = (codes.float() - 1).reshape(n, scales.shape[1], -1) * scales.reshape(
            scales.shape[0], scales.shape[1], 1)
        return w.reshape(n, k).to(dtype)
    data = f.data(name).numpy()
    try:
        qtype = gguf.GGMLQuantizationType(t.type)
        shape = gguf.quant_shape_to_byte_shape(t.shape, qtype)
        out = gguf.quants.dequantize(data.reshape(shape), qtype)
    except (NotImplementedError, ValueError, KeyError) as e:
        raise ValueError(f"{f.where(name)}: cannot dequantize this type ({e})") from None
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(dtype)


# ---- names ----------------------------------------------------------------------------------

def _hf_name(gguf_name: str, where: str) -> Tuple[str, str]:
    """``(module name, "weight" | "bias" | "scale")`` of a GGUF tensor name."""
    m = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias|scale)", gguf_name)
    base = m and (_BLOCK_NAMES if m.group(1) is not None else _GLOBAL_NAMES).get(m.group(2))
    if base is None:
        extra = (" (llama3-style rope scaling is not supported)" if "rope" in gguf_name else "")
        raise ValueError(f"{where}: no place for this tensor in a Llama-family model{extra}; "
                         f"expected {sorted(_GLOBAL_NAMES)} or blk.N.{sorted(_BLOCK_NAMES)}")
    prefix = f"model.layers.{m.group(1)}." if m.group(1) is not None else ""
    return prefix + base, m.group(3)


# ---- the model ------------------------------------------------------------------------------

_REQUIRED = object()


def _hparams(f: GGUFFile, arch: str) -> Dict[str, Any]:
    meta = f.metadata

    def get(key, default=_REQUIRED):
        value = meta.get(f"{arch}.{key}", default)
        if value is _REQUIRED:
            raise ValueError(f"{f.path}: metadata '{arch}.{key}' is missing")
        if isinstance(value, list):
            raise ValueError(f"{f.path}: metadata '{arch}.{key}' is a per-layer list; "
                             "expected one value")
        return value

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    for key, value in (("attention.value_length", get("attention.value_length", head_dim)),
                       ("rope.dimension_count", get("rope.dimension_count", head_dim))):
        if int(value) != head_dim:
            raise ValueError(f"{f.path}: metadata '{arch}.{key}' = {value}, expected the head "
                             f"size {head_dim} (not supported otherwise)")
    scaling = get("rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{f.path}: rope scaling {scaling!r} is not supported (expected none)")
    embd = f.tensors.get("token_embd.weight")
    vocab = get("vocab_size", None) or len(meta.get("tokenizer.ggml.tokens", ())) or (
        embd.shape[0] if embd else None)
    if not vocab:
        raise ValueError(f"{f.path}: cannot tell the vocabulary size (no '{arch}.vocab_size', "
                         "tokenizer.ggml.tokens or token_embd.weight)")
    return dict(
        vocab_size=int(vocab), hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")), num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 2048)),
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"))


def _build_model(f: GGUFFile, arch: str, hp: Dict[str, Any]) -> nn.Module:
    from .hf._loading import model_skeleton, require_transformers
    transformers = require_transformers()
    config_name, model_name, _, act = ARCHITECTURES[arch]
    kwargs = dict(hp, hidden_act=act, tie_word_embeddings="output.weight" not in f.tensors,
                  attention_bias="blk.0.attn_q.bias" in f.tensors)
    if arch == "llama":
        kwargs["mlp_bias"] = "blk.0.ffn_up.bias" in f.tensors
    elif hp["head_dim"] != hp["hidden_size"] // hp["num_attention_heads"]:
        raise ValueError(f"{f.path}: a BitNet model's head size must be hidden / heads")
    if arch != "llama":
        kwargs.pop("head_dim")
    config = getattr(transformers, config_name)(**kwargs)
    config.architectures = [model_name]
    return model_skeleton(config)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, TernaryLinear))


def _check_given_model(model: nn.Module, hp: Dict[str, Any], path: str) -> None:
    for name, m in model.named_modules():
        if isinstance(m, (FusedSlice, FoldedRMSNorm)):
            raise ValueError(
                f"load_gguf: the model has fused projections or folded norms ('{name}'); pass "
                "a dense model or one converted with fuse=False, fold_norms=False (load_gguf "
                "fuses and folds itself: fuse=, fold_norms=)")
    config = getattr(model, "config", None)
    for key in ("num_attention_heads", "num_key_value_heads", "num_hidden_layers"):
        have = getattr(config, key, None)
        if have is not None and have != hp[key]:
            raise ValueError(f"load_gguf: the model's config has {key}={have}, the file "
                             f"{path} {hp[key]}")


def load_gguf(path: Union[str, os.PathLike], model: Optional[nn.Module] = None, *,
              format: str = "i2", act: str = "int8", granularity: Optional[str] = None,
              dtype: torch.dtype = torch.float32, fuse: bool = True, fold_norms: bool = True,
              i2_s_layout: str = "x86") -> nn.Module:
    """Loads a Llama-family GGUF file (architectures ``llama``, ``bitnet``, ``bitnet-b1.58``)
    into a Hugging Face model whose ternary tensors (TQ1_0, TQ2_0, I2_S) are
    :class:`TernaryLinear` layers.

    Args:
        model: ``None`` builds the model from the file's metadata (``LlamaForCausalLM`` or
            ``BitNetForCausalLM``, parameters on the meta device until loaded); or a model
            whose layers take the tensors (dense, or converted with ``fuse=False,
            fold_norms=False``; its ternary layers are replaced).
        format, act: of the ternary layers (see :class:`TernaryLinear`).
        granularity: ``None`` (one scale per tensor where all rows share one, else per row),
            ``"tensor"`` or ``"channel"``.
        dtype: of every other tensor (embedding, norms, biases, a non-ternary head), which
            loads through gguf's dequantizer where it is quantized (Q8_0, Q6_K, ...).
            float32 (default) holds F32, F16 and BF16 exactly.
        fuse, fold_norms: as :func:`ternary_ops.convert` (q/k/v and gate/up fused, decoder
            norms folded into the act="int8" layers).
        i2_s_layout: ``"x86"``, the only I2_S layout read (see the module's docs).

    Raises ``ValueError`` naming the tensor for per-group block scales, invalid codes,
    unsupported types, shapes or names, and missing tensors.
    """
    check_format(format)
    _check_act(act)
    if granularity not in (None,) + GRANULARITIES:
        raise ValueError(f"granularity must be None, 'tensor' or 'channel', got {granularity!r}")
    if i2_s_layout not in I2_S_LAYOUTS:
        raise ValueError(f"i2_s_layout={i2_s_layout!r} is not supported: only bitnet.cpp's x86 "
                         "layout (blocks of 128 weights in 32 bytes) is read; its ARM builds "
                         "write blocks of 64 under the same type id")
    f = GGUFFile(path)
    arch = f.metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ValueError(f"{f.path}: architecture {arch!r} is not supported; expected one of "
                         f"{sorted(ARCHITECTURES)}")
    hp = _hparams(f, arch)
    if model is None:
        model = _build_model(f, arch, hp)
    else:
        _check_given_model(model, hp, f.path)
    ternary: Dict[str, list] = {}
    dense: Dict[str, torch.Tensor] = {}
    extra_scale: Dict[str, float] = {}
    for name in f.tensors:
        where = f.where(name)
        module_name, kind = _hf_name(name, where)
        if kind == "scale":  # llama.cpp's optional per-tensor output scale (BitNet)
            extra_scale[module_name] = float(_dense_tensor(f, name, torch.float32).reshape(-1)[0])
            continue
        try:
            target = model.get_submodule(module_name)
        except AttributeError:
            raise ValueError(f"{where}: the model has no module '{module_name}'") from None
        key = f"{module_name}.{kind}"
        if kind == "weight" and _is_linear(target) and f.tensors[name].type in TYPE_NAMES:
            want = (target.out_features, target.in_features)
            if f.tensors[name].shape != want:
                raise ValueError(f"{where}: expected [{want[0]}, {want[1]}] for "
                                 f"'{module_name}', got {list(f.tensors[name].shape)}")
            ternary[module_name] = list(read_ternary(f, name, granularity))
            continue
        if kind == "weight" and isinstance(target, TernaryLinear):
            raise ValueError(f"{where}: '{module_name}' is ternary in the model but "
                             f"{_type_name(f.tensors[name].type)} in the file")
        have = getattr(target, kind, None)
        if not isinstance(have, torch.Tensor) or tuple(have.shape) != f.tensors[name].shape:
            raise ValueError(f"{where}: expected {list(have.shape) if have is not None else 'a'}"
                             f" tensor for '{key}', got {list(f.tensors[name].shape)}")
        dense[key] = _dense_tensor(f, name, dtype)
    for module_name, factor in extra_scale.items():
        if module_name in ternary:
            ternary[module_name][1] = ternary[module_name][1] * factor
        elif module_name + ".weight" in dense:
            dense[module_name + ".weight"] *= factor
    if ARCHITECTURES[arch][2]:  # llama: undo the rope permutation of q and k
        for layer in range(hp["num_hidden_layers"]):
            for proj, heads in zip(_PERMUTED, (hp["num_attention_heads"],
                                               hp["num_key_value_heads"])):
                module_name = f"model.layers.{layer}.{proj}"
                if module_name in ternary:
                    ternary[module_name] = [_permute(x, heads, inverse=True)
                                            for x in ternary[module_name]]
                for kind in ("weight", "bias"):
                    if f"{module_name}.{kind}" in dense:
                        dense[f"{module_name}.{kind}"] = _permute(
                            dense[f"{module_name}.{kind}"], heads, inverse=True)
    if "lm_head.weight" not in dense and "lm_head" not in ternary:
        # llama.cpp's head is token_embd where 'output' is absent: the same tensor
        dense["lm_head.weight"] = dense.get("model.embed_tokens.weight")
    else:  # a head of its own, which tie_weights() must not tie back
        untie_config(getattr(model, "config", None))
    _check_complete(model, f.path, dense, ternary)
    for module_name, (codes, scale) in ternary.items():
        bias = dense.pop(module_name + ".bias", None)
        layer = TernaryLinear.from_ternary(codes, scale, bias, format=format, act=act)
        layer.layer_name = module_name
        model.set_submodule(module_name, layer)
    from .hf._loading import finish_load
    model = finish_load(model, {k: v for k, v in dense.items() if v is not None}, f.path)
    if fuse:
        fuse_projections(model)
    if fold_norms:
        fold_norms_into_layers(model)
    use_huge_pages(model)
    return model


def _check_complete(model: nn.Module, path: str, dense, ternary) -> None:
    covered = {k for k, v in dense.items() if v is not None}
    for module_name in ternary:
        covered |= {f"{module_name}.{k}" for k in ("weight", "weight_scale")}
    missing = [k for k in model.state_dict() if k not in covered]
    if missing:
        raise ValueError(f"{path}: the file lacks tensors the model needs: {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}")


# ---- writing a file -------------------------------------------------------------------------

def _linear_parts(model: nn.Module, name: str, module: nn.Module, consumed: set):
    """``("ternary", codes int8 [N, K], scale [] or [N], bias)`` or ``("dense", weight,
    bias)`` of a linear module of the model; adds its state-dict keys to ``consumed``."""
    if isinstance(module, FusedSlice):
        fused, (start, stop) = module.fused, (module.start, module.stop)
        parent = name.rpartition(".")[0]
        consumed.update(f"{parent}.{module.source}.{k}" for k in fused.state_dict())
        scale = fused.weight_scale
        return ("ternary", _codes(fused)[start:stop], scale if scale.dim() == 0 else
                scale[start:stop], module.bias)
    consumed.update(f"{name}.{k}" for k in module.state_dict())
    if isinstance(module, TernaryLinear):
        if getattr(module, "rms_norm", None) is not None:
            raise ValueError(f"save_gguf: layer '{name}' normalises its own input (a BitNet "
                             "layer's rms_norm), which the GGUF Llama layout has no place for")
        return "ternary", _codes(module), module.weight_scale, module.bias
    if isinstance(module, Int8Linear):
        return "dense", module.dequantize(), module.bias
    if isinstance(module, nn.Linear):
        return "dense", module.weight, module.bias
    raise ValueError(f"save_gguf: layer '{name}' is a {type(module).__name__}; expected "
                     "TernaryLinear, nn.Linear or Int8Linear")


def _codes(layer: TernaryLinear) -> torch.Tensor:
    return ternary_codes(layer.weight.detach().cpu(), layer.format, layer.out_features)


def _fp16_scale(name: str, scale: torch.Tensor, round_scales: bool) -> torch.Tensor:
    s = scale.detach().float().cpu()
    half = s.to(torch.float16)
    if not bool(torch.isfinite(half).all()) or bool(((half == 0) & (s != 0)).any()):
        raise ValueError(f"{name}: a scale is outside fp16's range (expected finite, nonzero "
                         f"values within +-65504, got min |s| {float(s.abs().min())}, max "
                         f"{float(s.abs().max())}); GGUF block scales are fp16")
    changed = half.float() != s
    if bool(changed.any()):
        i = int(changed.reshape(-1).nonzero()[0])
        got, want = float(s.reshape(-1)[i]), float(half.float().reshape(-1)[i])
        if not round_scales:
            raise ValueError(f"{name}: expected scales that fp16 holds exactly, got {got!r} "
                             f"(fp16: {want!r}); GGUF block scales are fp16: pass "
                             "round_scales=True to round them")
        rel = float(((half.float() - s).abs() / s.abs()).max())
        warnings.warn(f"{name}: scales rounded to fp16 (largest relative change {rel:.3g}, "
                      f"e.g. {got!r} -> {want!r})", UserWarning, stacklevel=4)
    return half


def _float_array(t: torch.Tensor, keep_half: bool) -> Tuple[np.ndarray, Optional[int]]:
    """``(array, raw GGML type)`` of a float tensor: F32, or F16 / BF16 as stored when
    ``keep_half`` (1-D tensors are always F32, as llama.cpp wants its norms)."""
    t = t.detach().cpu()
    if keep_half and t.dim() > 1 and t.dtype == torch.float16:
        return t.numpy(), None
    if keep_half and t.dim() > 1 and t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.uint8).numpy(), 30
    return t.float().numpy(), None


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):  # transformers 5
        kind = params.get("rope_type", "default")
        theta = params.get("rope_theta")
    else:
        scaling = getattr(config, "rope_scaling", None)
        kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
        theta = getattr(config, "rope_theta", 10000.0)
    if kind != "default":
        raise ValueError(f"save_gguf: rope scaling {kind!r} is not supported (expected none)")
    return float(theta)


def placeholder_vocab(vocab_size: int) -> Dict[str, Any]:
    """A SentencePiece-style vocabulary llama.cpp accepts, for models without one: ``<unk>``,
    ``<s>``, ``</s>``, the 256 byte tokens ``<0x00>`` .. ``<0xFF>``, then ``<tok_N>``."""
    if vocab_size < 3 + 256:
        raise ValueError(f"save_gguf: the placeholder vocabulary needs vocab_size >= 259 (3 "
                         f"special and 256 byte tokens), got {vocab_size}; pass vocab=")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256  # llama.cpp token types: UNKNOWN, CONTROL, BYTE, NORMAL
    tokens += [f"<tok_{i}>" for i in range(len(tokens), vocab_size)]
    types += [1] * (vocab_size - len(types))
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * vocab_size, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2}


def _add_metadata(writer, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)) and value:
        writer.add_array(key, list(value))
    else:
        raise ValueError(f"save_gguf: metadata '{key}' has a value of type "
                         f"{type(value).__name__}; expected bool, int, float, str or a list")


def save_gguf(model: nn.Module, path: Union[str, os.PathLike], type: str = "TQ2_0", *,
              vocab: Optional[Mapping[str, Any]] = None, round_scales: bool = False,
              keep_half: bool = True) -> None:
    """Writes a Hugging Face Llama model with ternary layers (from :func:`ternary_ops.convert`,
    fused or not, norms folded or not) as a GGUF file of architecture ``llama`` that
    llama.cpp loads: ternary layers as ``type`` (``"TQ2_0"`` or ``"TQ1_0"``), everything else
    as F32 (2-D F16 / BF16 tensors as stored with ``keep_half``; an 8-bit head or embedding
    dequantized). ``load_gguf`` reads it back bit for bit.

    Args:
        vocab: the ``tokenizer.*`` metadata (e.g. :func:`gguf_vocab` of another file); default
            :func:`placeholder_vocab`, enough for llama.cpp to load the model and run token
            ids, not to tokenize text.
        round_scales: each row's (or tensor's) scale becomes the fp16 ``d`` of its blocks;
            a scale fp16 cannot hold exactly is an error unless this is set, which rounds it
            to the nearest fp16 value and warns with the largest relative change.

    Every ternary layer's in_features must be a multiple of 256 (the block size).
    """
    gguf = require_gguf()
    if type not in _QTYPES:
        raise ValueError(f"type must be one of {sorted(_QTYPES)}, got {type!r}")
    qtype = _QTYPES[type]
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "llama":
        raise ValueError("save_gguf: expected a Hugging Face Llama model (config.model_type "
                         f"'llama'), got {getattr(config, 'model_type', type(model).__name__)!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"save_gguf: expected hidden_act 'silu', got {config.hidden_act!r}")
    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(None, "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(_FILE_TYPES[qtype])
    writer.add_quantization_version(2)
    for key, value in (placeholder_vocab(config.vocab_size) if vocab is None else vocab).items():
        _add_metadata(writer, key, value)

    consumed: set = set()
    emb = model.get_input_embeddings()
    names = [("model.embed_tokens", "token_embd")]
    for i in range(config.num_hidden_layers):
        names += [(f"model.layers.{i}.{hf}", f"blk.{i}.{g}") for g, hf in _BLOCK_NAMES.items()]
    names.append(("model.norm", "output_norm"))
    head = model.get_output_embeddings()
    tied = isinstance(head, nn.Linear) and head.weight is getattr(emb, "weight", None)
    if tied:
        consumed.add("lm_head.weight")
    else:
        names.append(("lm_head", "output"))
    with torch.no_grad():
        for hf, g in names:
            try:
                module = model.get_submodule(hf)
            except AttributeError:
                if "sub_norm" in hf:
                    continue
                raise ValueError(f"save_gguf: the model has no module '{hf}' (expected a "
                                 "Llama layout)") from None
            if isinstance(module, (nn.Embedding, Int8Embedding)):
                consumed.update(f"{hf}.{k}" for k in module.state_dict())
                w = module.weight if isinstance(module, nn.Embedding) else module.dequantize()
                writer.add_tensor(f"{g}.weight", *_tensor_args(w, keep_half))
                continue
            if not hasattr(module, "in_features") and not isinstance(module, FusedSlice):
                consumed.update(f"{hf}.{k}" for k in module.state_dict())
                writer.add_tensor(f"{g}.weight", *_tensor_args(module.weight, keep_half))
                continue
            kind, *parts = _linear_parts(model, hf, module, consumed)
            permute = hf.endswith(_PERMUTED)
            heads_here = heads if hf.endswith("q_proj") else kv_heads
            bias = parts[-1]
            if permute and bias is not None:
                bias = _permute(bias.detach(), heads_here)
            if kind == "dense":
                w = _permute(parts[0].detach(), heads_here) if permute else parts[0]
                writer.add_tensor(f"{g}.weight", *_tensor_args(w, keep_half))
            else:
                codes, scale = parts[0], parts[1].detach()
                if permute:
                    codes, scale = _permute(codes, heads_here), _permute(scale, heads_here)
                data = ternary_bytes(codes, scale, type, round_scales, f"save_gguf: layer '{hf}'")
                writer.add_tensor(f"{g}.weight", data, raw_dtype=gguf.GGMLQuantizationType(qtype))
            if bias is not None:
                writer.add_tensor(f"{g}.bias", *_tensor_args(bias, keep_half))
    left = [k for k in model.state_dict() if k not in consumed]
    if left:
        raise ValueError(f"save_gguf: the model has tensors with no place in the GGUF Llama "
                         f"layout: {left[:8]}{' ...' if len(left) > 8 else ''}")
    write_atomic(os.fspath(path), lambda tmp: _write(writer, tmp))


def _tensor_args(t: torch.Tensor, keep_half: bool):
    array, raw = _float_array(t, keep_half)
    if raw is None:
        return (array,)
    return array, None, require_gguf().GGMLQuantizationType(raw)


def _write(writer, path: str) -> None:
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
