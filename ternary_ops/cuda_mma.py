"""The tensor-core GEMMs of the CUDA ops at large M, in Triton.

Where this module is loaded, the CUDA glue of ``torch.ops.ternary.linear_i2`` / ``linear_i8`` /
``linear_q8`` (and of the ``rms_norm_linear`` ops) hands the rows where it was measured faster
than the built-in tensor-core kernels (``library_gemm_pays()`` in csrc/cuda/launchers.cuh: M >=
256, or M >= 64 with enough output tiles) to the internal ops ``ternary::_mma_int8`` (act="int8",
after the op's own quantize pre-pass) and ``ternary::_mma_float`` (act="none", bfloat16 / float16
x); docs/DESIGN.md, "The Triton GEMMs". Triton's ``tl.dot`` lowers to Hopper's warpgroup MMA
(wgmma) on sm_90 and to ``mma.sync`` on sm_80.

The 2-bit weights are read once per tile and decoded in registers, four codes per 32-bit
instruction, into the int8 operand of the dot (for act="none" then converted to x's dtype).
Row ``i`` of a weight tile of ``BN`` rows is byte row ``r0 + i % (BN / 4)`` at bit pair
``i // (BN / 4)``, i.e. output row ``(i // (BN / 4)) * R + r0 + i % (BN / 4)`` of the i2
layout (docs/DESIGN.md, "Formats").
The int32 sums are exact; the epilogue is the reference's float32 steps, ``dot / inv * scale
(+ bias)``, with a true division, no fused multiply-add, and a round-to-nearest-even
conversion, so the result is bit-identical to ``ternary_ops.reference``.

Loaded by ``ternary_ops`` where torch has CUDA and Triton imports; nothing else needs it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["mma_int8", "mma_float"]


@triton.jit
def _decode_i2(p, shift, ASM: tl.constexpr):
    """int8 weights (-1, 0, +1) from the code at bit pair ``shift / 2`` of each byte of ``p``
    (uint8; ``shift`` uint8 of the same shape)."""
    if ASM:
        # Four bytes per instruction: (c & 3) + 0x7F <= 0x82, so no carry crosses a byte, and
        # xor 0x80 maps 0x7F / 0x80 / 0x81 to -1 / 0 / +1.
        return tl.inline_asm_elementwise(
            "{ .reg .b32 t, s; and.b32 s, $2, 0xff; shr.b32 t, $1, s; "
            "and.b32 t, t, 0x03030303; add.u32 t, t, 0x7F7F7F7F; xor.b32 $0, t, 0x80808080; }",
            "=r,r,r", [p, shift], dtype=tl.int8, is_pure=True, pack=4)
    else:  # the same arithmetic where inline PTX cannot run (Triton's interpreter)
        return ((p >> shift) & 3).to(tl.int8) - 1


@triton.jit
def _mma_kernel(a_ptr, inv_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr,
                M, N, K, W_ROWS, stride_a, stride_w, stride_out,
                INT8: tl.constexpr, I2: tl.constexpr, SCALE_PER_ROW: tl.constexpr,
                HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                STAGES: tl.constexpr, ASM: tl.constexpr):
    """out[BM, BN] tiles of a @ T^T. INT8: a is the quantized x (int8), int32 sums, epilogue
    dot / inv * scale; else a is x itself (bfloat16 / float16), the codes are converted to its
    dtype, float32 sums, epilogue dot * scale."""
    # Tile order: GROUP_M row tiles of x run next to each other over the weight tiles, so the
    # weight tiles they share are read from L2.
    pid = tl.program_id(0)
    BR: tl.constexpr = BN // 4 if I2 else BN  # weight rows in memory per tile
    num_m = tl.cdiv(M, BM)
    num_w = tl.cdiv(W_ROWS, BR)
    group = GROUP_M * num_w
    first_m = (pid // group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_m
    pid_w = (pid % group) // group_m

    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_i = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    if I2:
        rows = pid_w * BR + offs_i % BR
        n = (offs_i // BR) * W_ROWS + rows
        shift = tl.broadcast_to(((offs_i // BR) * 2).to(tl.uint8)[:, None], (BN, BK))
    else:
        rows = pid_w * BR + offs_i
        n = rows
    mask_m = offs_m < M
    mask_w = rows < W_ROWS
    a_ptrs = a_ptr + offs_m[:, None] * stride_a + offs_k[None, :]
    w_ptrs = w_ptr + rows[:, None] * stride_w + offs_k[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.int32 if INT8 else tl.float32)
    for k0 in tl.range(0, K, BK, num_stages=STAGES):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
            p = tl.load(w_ptrs, mask=mask_w[:, None], other=0)
        else:
            kmask = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=mask_m[:, None] & kmask[None, :], other=0)
            p = tl.load(w_ptrs, mask=mask_w[:, None] & kmask[None, :], other=0)
        w = _decode_i2(p, shift, ASM) if I2 else p
        if INT8:
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.int32)
        else:
            acc = tl.dot(a, tl.trans(w.to(a.dtype)), acc)
        a_ptrs += BK
        w_ptrs += BK

    mask_n = mask_w & (n < N)
    if SCALE_PER_ROW:
        scale = tl.load(scale_ptr + n, mask=mask_n, other=0.0)[None, :]
    else:
        scale = tl.load(scale_ptr)
    if INT8:
        inv = tl.load(inv_ptr + offs_m, mask=mask_m, other=1.0)
        y = tl.math.div_rn(acc.to(tl.float32), inv[:, None]) * scale
    else:
        y = acc * scale
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + n, mask=mask_n, other=0.0)[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_out + n[None, :],
             y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"),
             mask=mask_m[:, None] & mask_n[None, :])


def _tile_config(m: int):
    """(BM, BN, BK, stages, warps) for M rows. Not tuned for this kernel yet: the tiles that
    did best for its earlier forms in the H200 sweeps (benchmarks/results/cuda.md)."""
    if m >= 256:
        return 128, 128, 128, 3, 8
    return 64, 128, 128, 4, 4


def _launch(a, inv, weight, scale, out_features, bias, out, int8: bool, interpret: bool):
    m, n = out.shape
    k = weight.shape[1]
    if m == 0 or n == 0:
        return
    i2 = weight.dtype == torch.uint8
    bm, bn, bk, stages, warps = _tile_config(m)
    w_rows = weight.shape[0]
    grid = (triton.cdiv(m, bm) * triton.cdiv(w_rows, bn // 4 if i2 else bn),)
    _mma_kernel[grid](
        a, inv if inv is not None else scale, weight, scale,
        bias if bias is not None else scale, out,
        m, out_features, k, w_rows, a.stride(0), weight.stride(0), out.stride(0),
        INT8=int8, I2=i2, SCALE_PER_ROW=scale.numel() > 1, HAS_BIAS=bias is not None,
        EVEN_K=k % bk == 0, BM=bm, BN=bn, BK=bk, GROUP_M=8, STAGES=stages, ASM=not interpret,
        num_warps=warps, enable_fp_fusion=False)


def mma_int8(q: torch.Tensor, inv: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
             out_features: int, bias, out: torch.Tensor, *, interpret: bool = False) -> None:
    """``out[m, n] = (q[m] . T[n]) / inv[m] * scale[n] (+ bias[n])`` in out's dtype, with T the
    ternary codes of i2 ``weight`` (uint8 ``[ceil(N / 4), K]``) or the int8 ``weight`` ``[N,
    K]``; ``q`` int8 ``[M, >= K]`` (its columns past K are not read), ``inv`` / ``scale`` /
    ``bias`` float32, ``out`` ``[M, N]`` with unit column stride. ``interpret``: decode without
    inline PTX (for Triton's CPU interpreter)."""
    _launch(q, inv, weight, scale, out_features, bias, out, True, interpret)


def mma_float(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_features: int,
              bias, out: torch.Tensor, *, interpret: bool = False) -> None:
    """act="none": ``out[m, n] = (x[m] . T[n]) * scale[n] (+ bias[n])`` with bfloat16 or
    float16 ``x`` ``[M, K]`` (unit column stride), float32 sums; the rest as
    :func:`mma_int8`."""
    _launch(x, None, weight, scale, out_features, bias, out, False, interpret)


@torch.library.impl("ternary::_mma_int8", "CUDA")
def _mma_int8_cuda(q, inv, weight, scale, out_features, bias, out):
    mma_int8(q, inv, weight, scale, out_features, bias, out)


@torch.library.impl("ternary::_mma_float", "CUDA")
def _mma_float_cuda(x, weight, scale, out_features, bias, out):
    mma_float(x, weight, scale, out_features, bias, out)
