"""Hugging Face ``transformers`` integration: BitNet checkpoints and converted models.

    import ternary_ops.hf as tops_hf

    # a BitNet b1.58 checkpoint folder (config.json + safetensors), offline
    model = tops_hf.from_pretrained_bitnet("path/to/bitnet-b1.58-2B-4T")
    # ...or a BitNet model transformers already loaded: its BitLinear layers are replaced in place
    tops_hf.from_pretrained_bitnet(hf_model)

    # any transformers model: ternarize with tops.convert, then save and load it
    tops.convert(model)
    tops_hf.save_pretrained(model, "out/")
    model = tops_hf.load_pretrained("out/")

``transformers`` is an optional dependency (``pip install ternary-ops[hf]``); this module
imports it lazily, so ``import ternary_ops`` never needs it.

How Hugging Face's BitNet layers map onto :class:`BitNetLinear` (a :class:`TernaryLinear`):

* Packed weights (``uint8 [out/4, in]``, code ``w + 1``, row ``j + i*out/4`` in bits ``2i``)
  are the i2 format as is: with ``format="i2"`` they are validated and used without a copy.
* ``linear_class="bitlinear"`` computes ``y = dot / (act_scale * weight_scale)``: the stored
  ``weight_scale`` is ``1 / mean|W|``, so our multiplicative scale is its reciprocal. The
  result equals Hugging Face's up to float rounding of that reciprocal (a few ulp); the
  integer part (quantized activations times ternary codes) is identical.
* ``linear_class="autobitlinear"`` computes ``y = (dequant(q) @ W.T + bias) * weight_scale``:
  the scale multiplies and, unlike ``nn.Linear``, it also scales the bias, so our bias is
  ``bias * weight_scale``. Weights may be stored packed or as dense ternary values. In
  ``quantization_mode="online"`` the dense weights are quantized once at load time with the
  same absmean rule Hugging Face applies on every call (``round(W / mean|W|)``, clamped).
* ``use_rms_norm=True``: the RMSNorm Hugging Face applies to the layer's input before
  quantizing is kept as ``BitNetLinear.rms_norm`` (same parameters, same arithmetic).
* Activations: Hugging Face quantizes per token with ``127 / max|x|.clamp(1e-5)``, round half
  to even, clamp to [-128, 127] -- our ``act="int8"`` rule. In float32 the int8 activations are
  identical. In bfloat16/float16 ``BitLinear`` computes that scale and the product ``x * scale``
  in the half type (and rounds its dot products to it), while we always quantize in float32,
  so half-precision results differ from Hugging Face's by half-precision rounding (ours are the
  more accurate; the comparison tests run in float32).
"""
from ._loading import CHECKPOINT_NAME
from .decode import cache_kwargs, cache_tensors, compile_kwargs, cuda_graph_step
from .attention import ATTENTION_NAME, use_decode_attention
from .bitnet import from_pretrained_bitnet, patch_bitnet, save_random_bitnet
from .layers import LINEAR_CLASSES, BitNetLinear, RMSNorm, make_bitnet_linear
from .pretrained import HF_FORMAT_VERSION, HF_METADATA_KEY, load_pretrained, save_pretrained

__all__ = [
    "cache_kwargs", "cache_tensors", "compile_kwargs", "cuda_graph_step", "ATTENTION_NAME",
    "use_decode_attention",
    "BitNetLinear", "RMSNorm", "make_bitnet_linear", "LINEAR_CLASSES", "patch_bitnet",
    "from_pretrained_bitnet", "save_random_bitnet", "save_pretrained", "load_pretrained",
    "CHECKPOINT_NAME", "HF_METADATA_KEY", "HF_FORMAT_VERSION",
]
