"""The ternary ops: thin wrappers over ``torch.ops.ternary.*``, their fake (meta) kernels,
autograd, and the reference fallback for devices without a native kernel.

Schemas live in ``csrc/ops.cpp`` (one ``TORCH_LIBRARY(ternary, ...)`` block); native kernels
register per dispatch key (CPU always; CUDA when built; MPS from the optional native module
``ternary_ops._C_mps`` where it was built, else from ``ternary_ops.mps_shader`` through
``torch.mps.compile_shader``: see :func:`backends`). Anything else reaches the
``CompositeExplicitAutograd`` fallback here, which runs the plain-torch reference and warns once.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import warnings
from typing import Optional

import torch

from . import _C  # noqa: F401  (registers the schemas and native kernels)
from . import reference
from .formats import ACT_MAX_K, Q8_ACT_MAX_K, packed_rows, unpack_i2


def _import_mps_native():
    """The optional native MPS glue (``ternary_ops._C_mps``: the Objective-C++ glue that
    registers the Metal kernels for the MPS key; setup.py builds it on macOS, and leaves it out
    when its build fails) after ``_C``, whose schemas it implements: (module or None, why not)."""
    name = f"{__package__}._C_mps"
    if importlib.util.find_spec(name) is None:
        return None, ("ternary_ops._C_mps is not installed: setup.py builds it on macOS only, "
                      "and leaves it out when it fails to build (the build printed a warning; "
                      "pip shows it with -v)")
    try:
        return importlib.import_module(name), None
    except Exception as e:  # a module that exists but cannot load: say so, keep the package
        why = f"ternary_ops._C_mps failed to load: {type(e).__name__}: {e}"
        warnings.warn(f"ternary_ops: {why}; the MPS ops take another path (backends()['mps'])",
                      RuntimeWarning, stacklevel=2)
        return None, why


# Why the native MPS glue is absent (None when it loaded): a string for users and tools.
_C_mps, MPS_NATIVE_ERROR = _import_mps_native()

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check_args(op: str, x, weight, scale, out_features, bias, act) -> int:
    """Python twin of csrc/aten/op_checks.h for the fake and fallback kernels; returns N."""
    if act not in reference.ACT_MODES:
        raise ValueError(f"{op}: act must be 'int8' or 'none', got '{act}'")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have shape [..., K], got a 0-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D, got shape {list(weight.shape)}")
    k = x.shape[-1]
    if not op.endswith("i2"):
        if weight.dtype != torch.int8:
            raise ValueError(f"{op}: weight must be int8 (format {op[-2:]}), got {weight.dtype}")
        n = weight.shape[0]
    else:
        if weight.dtype != torch.uint8:
            raise ValueError(f"{op}: weight must be uint8 (format i2), got {weight.dtype}")
        if out_features < 1:
            raise ValueError(f"{op}: out_features must be >= 1, got {out_features}")
        n = out_features
        if weight.shape[0] != packed_rows(n):
            raise ValueError(f"{op}: weight must have ceil(out_features / 4) = {packed_rows(n)} "
                             f"rows for out_features = {n}, got weight of shape "
                             f"{list(weight.shape)}")
    if weight.shape[1] != k:
        raise ValueError(f"{op}: x must have shape [..., in_features] with in_features = "
                         f"weight.size(1) = {weight.shape[1]}, got x of shape {list(x.shape)}")
    max_k = Q8_ACT_MAX_K if op.endswith("q8") else ACT_MAX_K
    if act == "int8" and k > max_k:
        raise ValueError(f"{op}: act='int8' sums int32 dot products, exact for in_features <= "
                         f"{max_k}; got in_features = {k} (use act='none')")
    if not scale.is_floating_point():
        raise ValueError(f"{op}: scale must be a floating tensor, got {scale.dtype}")
    if not (scale.numel() == 1 or (scale.dim() == 1 and scale.shape[0] == n)):
        raise ValueError(f"{op}: scale must be a scalar or have shape [N] = [{n}], got "
                         f"{list(scale.shape)}")
    if bias is not None:
        if not bias.is_floating_point():
            raise ValueError(f"{op}: bias must be a floating tensor, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != n:
            raise ValueError(f"{op}: bias must have shape [N] = [{n}], got {list(bias.shape)}")
    for name, t in (("weight", weight), ("scale", scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: all tensors must be on x's device ({x.device}), got {name} "
                             f"on {t.device}")
    return n


# ---- fake kernels: shapes only, for torch.compile / FakeTensor / meta --------------------

@torch.library.register_fake("ternary::linear_i8")
def _linear_i8_fake(x, weight, scale, bias, act):
    n = _check_args("ternary.linear_i8", x, weight, scale, 0, bias, act)
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("ternary::linear_q8")
def _linear_q8_fake(x, weight, scale, bias, act):
    n = _check_args("ternary.linear_q8", x, weight, scale, 0, bias, act)
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("ternary::linear_i2")
def _linear_i2_fake(x, weight, scale, out_features, bias, act):
    n = _check_args("ternary.linear_i2", x, weight, scale, out_features, bias, act)
    return x.new_empty((*x.shape[:-1], n))


def _check_norm_args(op: str, x, norm_weight, eps) -> None:
    """Python twin of the norm checks in csrc/aten/op_checks.h."""
    if not isinstance(norm_weight, torch.Tensor) or not norm_weight.is_floating_point():
        got = norm_weight.dtype if isinstance(norm_weight, torch.Tensor) else type(norm_weight)
        raise ValueError(f"{op}: norm_weight must be a floating tensor, got {got}")
    k = x.shape[-1] if x.dim() >= 1 else None
    if norm_weight.dim() != 1 or norm_weight.shape[0] != k:
        raise ValueError(f"{op}: norm_weight must have shape [in_features] = [{k}], got "
                         f"{list(norm_weight.shape)}")
    if norm_weight.device != x.device:
        raise ValueError(f"{op}: all tensors must be on x's device ({x.device}), got norm_weight "
                         f"on {norm_weight.device}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{op}: eps must be finite and >= 0, got {eps}")


def _check_rms_args(op: str, x, norm_weight, eps, weight, scale, out_features, bias) -> int:
    """Every check of an rms_norm_linear op (act is "int8"); returns out_features."""
    n = _check_args(op, x, weight, scale, out_features, bias, "int8")
    _check_norm_args(op, x, norm_weight, eps)
    return n


@torch.library.register_fake("ternary::rms_norm_linear_i8")
def _rms_norm_linear_i8_fake(x, norm_weight, eps, weight, scale, bias):
    n = _check_rms_args("ternary.rms_norm_linear_i8", x, norm_weight, eps, weight, scale, 0, bias)
    return x.new_empty((*x.shape[:-1], n))


@torch.library.register_fake("ternary::rms_norm_linear_i2")
def _rms_norm_linear_i2_fake(x, norm_weight, eps, weight, scale, out_features, bias):
    n = _check_rms_args("ternary.rms_norm_linear_i2", x, norm_weight, eps, weight, scale,
                        out_features, bias)
    return x.new_empty((*x.shape[:-1], n))


# ---- fallback for devices with no native kernel -----------------------------------------

_warned_devices = set()


def _warn_fallback(op: str, device: torch.device) -> None:
    if device.type not in _warned_devices:
        _warned_devices.add(device.type)
        warnings.warn(f"ternary_ops: no native kernel for {op} on device '{device.type}' in this "
                      "build; using the plain-torch reference path, which is slow. (Warned once "
                      "per device type.)", RuntimeWarning, stacklevel=3)


def _linear_i8_fallback(x, weight, scale, bias, act):
    _check_args("ternary.linear_i8", x, weight, scale, 0, bias, act)
    _warn_fallback("ternary.linear_i8", x.device)
    return reference.linear_i8(x, weight, scale, bias, act)


def _linear_q8_fallback(x, weight, scale, bias, act):
    _check_args("ternary.linear_q8", x, weight, scale, 0, bias, act)
    _warn_fallback("ternary.linear_q8", x.device)
    return reference.linear_q8(x, weight, scale, bias, act)


def _linear_i2_fallback(x, weight, scale, out_features, bias, act):
    _check_args("ternary.linear_i2", x, weight, scale, out_features, bias, act)
    _warn_fallback("ternary.linear_i2", x.device)
    return reference.linear_i2(x, weight, scale, out_features, bias, act)


def _rms_norm_linear_i8_fallback(x, norm_weight, eps, weight, scale, bias):
    _check_rms_args("ternary.rms_norm_linear_i8", x, norm_weight, eps, weight, scale, 0, bias)
    _warn_fallback("ternary.rms_norm_linear_i8", x.device)
    return reference.rms_norm_linear_i8(x, norm_weight, eps, weight, scale, bias)


def _rms_norm_linear_i2_fallback(x, norm_weight, eps, weight, scale, out_features, bias):
    _check_rms_args("ternary.rms_norm_linear_i2", x, norm_weight, eps, weight, scale, out_features,
                    bias)
    _warn_fallback("ternary.rms_norm_linear_i2", x.device)
    return reference.rms_norm_linear_i2(x, norm_weight, eps, weight, scale, out_features, bias)


torch.library.impl("ternary::linear_i8", "CompositeExplicitAutograd", func=_linear_i8_fallback)
torch.library.impl("ternary::linear_i2", "CompositeExplicitAutograd", func=_linear_i2_fallback)
torch.library.impl("ternary::linear_q8", "CompositeExplicitAutograd", func=_linear_q8_fallback)
torch.library.impl("ternary::rms_norm_linear_i8", "CompositeExplicitAutograd",
                   func=_rms_norm_linear_i8_fallback)
torch.library.impl("ternary::rms_norm_linear_i2", "CompositeExplicitAutograd",
                   func=_rms_norm_linear_i2_fallback)


# ---- autograd: w.r.t. x and bias; weights are frozen -------------------------------------
# act="int8" uses the straight-through estimator (rounding treated as identity), as in BitNet
# training: dL/dx = dL/dy @ (s * T). act="none" is linear in x, so that is its exact gradient.

def _setup_context(ctx, inputs, output):
    if len(inputs) == 5:  # linear_i8, linear_q8
        x, weight, scale, bias, _ = inputs
        ctx.out_features = None
    else:
        x, weight, scale, out_features, bias, _ = inputs
        ctx.out_features = out_features
    ctx.save_for_backward(weight, scale)
    ctx.x_dtype = x.dtype
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _grad_in(grad, weight, scale, out_features):
    """dL/d(the quantized input), float32: dL/dy @ (s * T), T the codes of ``weight``."""
    codes = weight if out_features is None else unpack_i2(weight, out_features)
    s = scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float().reshape(())
    return grad.float() @ (codes.float() * s)


def _grad_bias(ctx, grad, bias_index):
    if not (ctx.has_bias and ctx.needs_input_grad[bias_index]):
        return None
    return grad.float().reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)


def _grads(ctx, grad):
    weight, scale = ctx.saved_tensors
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = _grad_in(grad, weight, scale, ctx.out_features).to(ctx.x_dtype)
    return grad_x, _grad_bias(ctx, grad, 3 if ctx.out_features is None else 4)


def _backward_i8(ctx, grad):
    grad_x, grad_bias = _grads(ctx, grad)
    return grad_x, None, None, grad_bias, None


def _backward_i2(ctx, grad):
    grad_x, grad_bias = _grads(ctx, grad)
    return grad_x, None, None, None, grad_bias, None


torch.library.register_autograd("ternary::linear_i8", _backward_i8, setup_context=_setup_context)
torch.library.register_autograd("ternary::linear_i2", _backward_i2, setup_context=_setup_context)
torch.library.register_autograd("ternary::linear_q8", _backward_i8, setup_context=_setup_context)


# The rms_norm_linear ops: the straight-through estimator through the quantization, the
# RMSNorm differentiated as it is written (float32), w.r.t. x, norm_weight and bias.

def _setup_context_norm(ctx, inputs, output):
    if len(inputs) == 6:  # rms_norm_linear_i8
        x, norm_weight, eps, weight, scale, bias = inputs
        ctx.out_features = None
    else:
        x, norm_weight, eps, weight, scale, out_features, bias = inputs
        ctx.out_features = out_features
    ctx.save_for_backward(x, norm_weight, weight, scale)
    ctx.eps = eps
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _grads_norm(ctx, grad):
    x, norm_weight, weight, scale = ctx.saved_tensors
    grad_x = grad_w = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_n = _grad_in(grad, weight, scale, ctx.out_features)
        with torch.enable_grad():
            xf = x.detach().float().requires_grad_(ctx.needs_input_grad[0])
            gf = norm_weight.detach().float().requires_grad_(ctx.needs_input_grad[1])
            n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + ctx.eps) * gf
            wrt = [t for t in (xf, gf) if t.requires_grad]
            got = iter(torch.autograd.grad(n, wrt, grad_n))
        if ctx.needs_input_grad[0]:
            grad_x = next(got).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = next(got).to(norm_weight.dtype)
    return grad_x, grad_w, _grad_bias(ctx, grad, 5 if ctx.out_features is None else 6)


def _backward_norm_i8(ctx, grad):
    grad_x, grad_w, grad_bias = _grads_norm(ctx, grad)
    return grad_x, grad_w, None, None, None, grad_bias


def _backward_norm_i2(ctx, grad):
    grad_x, grad_w, grad_bias = _grads_norm(ctx, grad)
    return grad_x, grad_w, None, None, None, None, grad_bias


torch.library.register_autograd("ternary::rms_norm_linear_i8", _backward_norm_i8,
                                setup_context=_setup_context_norm)
torch.library.register_autograd("ternary::rms_norm_linear_i2", _backward_norm_i2,
                                setup_context=_setup_context_norm)


# ---- public wrappers ----------------------------------------------------------------------

def linear_i8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor] = None, act: str = "int8") -> torch.Tensor:
    """``y = s * (a @ T.T) (+ bias)`` with int8-direct weights ``T`` (int8 ``[N, K]``)."""
    return torch.ops.ternary.linear_i8(x, weight, scale, bias, act)


def linear_q8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
              bias: Optional[torch.Tensor] = None, act: str = "int8") -> torch.Tensor:
    """``y = s * (a @ Q.T) (+ bias)`` with int8 weights ``Q`` in [-127, 127] (int8 ``[N, K]``)
    and a scale per row or tensor: the op behind :class:`~ternary_ops.Int8Linear`."""
    return torch.ops.ternary.linear_q8(x, weight, scale, bias, act)


def linear_i2(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_features: int,
              bias: Optional[torch.Tensor] = None, act: str = "int8") -> torch.Tensor:
    """``y = s * (a @ T.T) (+ bias)`` with 2-bit packed weights (uint8 ``[ceil(N/4), K]``)."""
    return torch.ops.ternary.linear_i2(x, weight, scale, out_features, bias, act)


def rms_norm_linear_i8(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                       weight: torch.Tensor, scale: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`linear_i8` with act="int8" of ``RMSNorm(x) * norm_weight`` (eps ``eps``), the
    norm folded into the activation quantization: the normalised activations are never
    formed. Semantics: :func:`ternary_ops.reference.rms_norm_quantize`."""
    return torch.ops.ternary.rms_norm_linear_i8(x, norm_weight, eps, weight, scale, bias)


def rms_norm_linear_i2(x: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                       weight: torch.Tensor, scale: torch.Tensor, out_features: int,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`linear_i2` with act="int8" of ``RMSNorm(x) * norm_weight``, the norm folded into
    the activation quantization (see :func:`rms_norm_linear_i8`)."""
    return torch.ops.ternary.rms_norm_linear_i2(x, norm_weight, eps, weight, scale, out_features,
                                                bias)


def cpu_kernel() -> str:
    """Name of the CPU kernel set serving the ops (e.g. ``"avx512_vnni"``, ``"portable"``).

    One exception, under the automatic choice only: M = 1 (batch-1 decode) i2 act="int8"
    products run the set :func:`cpu_decode_kernel` names, where another set was measured faster
    for them on this kind of CPU (same results bit for bit)."""
    return _C.cpu_kernel()


def cpu_decode_kernel() -> str:
    """Name of the CPU kernel set serving M = 1 i2 act="int8" products: :func:`cpu_kernel`'s,
    except under the automatic choice on AMD CPUs with both AVX-512 VNNI and AVX-VNNI (Zen 5),
    where the 256-bit ``"avxvnni"`` kernel streams the packed weights faster."""
    return _C.cpu_decode_kernel()


def cpu_kernels_available() -> list:
    """CPU kernel sets this build and CPU can run, best first."""
    return list(_C.cpu_kernels_available())


def select_cpu_kernel(name: str) -> None:
    """Forces a CPU kernel set for this process (``"auto"`` restores the default choice).

    The environment variable ``TERNARY_OPS_KERNEL`` does the same at start-up.
    """
    _C.select_cpu_kernel(name)


def backends() -> dict:
    """Which native backends serve the ops: ``{"cpu": kernel set, "cuda": bool, "mps": ...,
    "cuda_mma": ...}``.

    ``mps`` names the path of the ops on Apple GPUs: ``"native"`` (the Objective-C++ glue,
    ``ternary_ops._C_mps``, loaded), ``"compile_shader"`` (no native glue; torch has MPS and
    ``torch.mps.compile_shader``, and ``ternary_ops.mps_shader.register()`` took the ops), or
    ``None`` (neither: ops on MPS tensors fall back to the slow reference, with a warning).
    ``ternary_ops.ops.MPS_NATIVE_ERROR`` says why the native glue is absent. ``cuda_mma`` names
    the tensor-core GEMMs of the CUDA ops at large M: ``"triton"`` (``ternary_ops.cuda_mma``,
    where Triton is installed), ``"built-in"``, or ``None`` without CUDA."""
    cuda = bool(_C.has_cuda())
    mma = None
    if cuda:
        mma = ("triton" if torch._C._dispatch_has_kernel_for_dispatch_key(
            "ternary::_mma_int8", "CUDA") else "built-in")
    return {"cpu": cpu_kernel(), "cuda": cuda, "mps": _MPS_PATH, "cuda_mma": mma}


def _load_cuda_mma() -> None:
    """Registers the Triton GEMMs of the CUDA ops at large M (ternary_ops/cuda_mma.py) where
    this build has CUDA, a GPU is visible and Triton imports; ``TERNARY_OPS_CUDA_TRITON=0``
    keeps the built-in kernels."""
    import os

    if os.environ.get("TERNARY_OPS_CUDA_TRITON", "1") == "0":
        return
    if not _C.has_cuda() or not torch.cuda.is_available():
        return
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    except Exception as e:  # a broken install: keep the built-in kernels, say why once
        warnings.warn(f"ternary_ops: Triton failed to import ({e!r}); the CUDA ops keep their "
                      "built-in kernels at large M", RuntimeWarning, stacklevel=2)
        return
    from . import cuda_mma  # noqa: F401  (registers ternary::_mma_int8 / _mma_float for CUDA)


_load_cuda_mma()


def _load_mps() -> Optional[str]:
    """The MPS path (backends()["mps"]): the native glue where it loaded, else the
    compile_shader kernels where torch has MPS and torch.mps.compile_shader (PyTorch >= 2.7)
    and mps_shader.register() takes the ops, else None."""
    if _C_mps is not None:
        return "native"
    mps = getattr(torch, "mps", None)
    if torch.backends.mps.is_available() and hasattr(mps, "compile_shader"):
        from . import mps_shader

        return "compile_shader" if mps_shader.register() else None
    return None


_MPS_PATH = _load_mps()
