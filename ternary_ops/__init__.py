"""ternary-ops: fast ternary-weight (BitNet b1.58) linear layers for PyTorch.

    import ternary_ops as tops
    summary = tops.convert(model)          # nn.Linear -> TernaryLinear, in place
    tops.save(model, "model.safetensors")

Ops: ``torch.ops.ternary.linear_i8`` and ``torch.ops.ternary.linear_i2`` (ternary weights), and
``torch.ops.ternary.linear_q8`` (int8 weights, for a quantized output head); see docs/DESIGN.md
for the formats and semantics. ``ternary_ops.reference`` holds their plain-torch definitions.
"""
from . import reference
from .convert import (DEFAULT_EXCLUDE, ConvertSummary, TernarizationWarning, convert,
                      quantize_head_and_embedding)
from .formats import dequantize, pack_i2, quantize, quantize_q8, unpack_i2, validate_weight
from .fuse import FusedSlice, fuse_projections
from .gguf import load_gguf, save_gguf  # the gguf package is imported only when they run
from .io import load, save
from .memory import use_huge_pages
from .nn import Int8Embedding, Int8Linear, TernaryLinear
from .qat import QATLinear, prepare_qat
from .ops import (backends, cpu_decode_kernel, cpu_kernel, cpu_kernels_available, linear_i2,
                  linear_i8, linear_q8, rms_norm_linear_i2, rms_norm_linear_i8,
                  select_cpu_kernel)

__version__ = "0.1.0"

__all__ = [
    "TernaryLinear", "FusedSlice", "fuse_projections", "use_huge_pages", "Int8Linear",
    "Int8Embedding",
    "quantize_q8", "linear_q8", "convert",
    "quantize_head_and_embedding", "ConvertSummary", "TernarizationWarning", "DEFAULT_EXCLUDE",
    "save", "load", "quantize",
    "pack_i2", "unpack_i2", "dequantize", "validate_weight", "linear_i8", "linear_i2",
    "rms_norm_linear_i8", "rms_norm_linear_i2",
    "cpu_kernel", "cpu_decode_kernel", "cpu_kernels_available", "select_cpu_kernel", "backends",
    "reference", "QATLinear", "prepare_qat",
    "load_gguf", "save_gguf",
]
