"""The tensor-core GEMMs of the CUDA ops past the GEMVs, in Triton.

Where this module is loaded, the CUDA glue of ``torch.ops.ternary.linear_i2`` / ``linear_i8`` /
``linear_q8`` (and of the ``rms_norm_linear`` ops) hands the calls ``library_gemm_pays()``
(csrc/cuda/launchers.cuh) gives it, every call of 64 rows or more and from 9 rows those its
sm_90 kernel serves better, to the internal ops ``ternary::_mma_int8`` (act="int8", after the
op's own quantize pre-pass) and ``ternary::_mma_float`` (act="none", bfloat16 / float16 x);
docs/DESIGN.md, "The Triton GEMMs". Two kernels, chosen by ``_plan``:

* ``_wgmma_i2_kernel`` (Gluon, sm_90, i2 weights, K a multiple of 16): the weights, decoded
  straight into registers, are the register operand of the asynchronous warpgroup MMA and
  the x tile its shared-memory operand; a TMA ring, and the decode of one k-step overlapping
  the MMA of the one before;
* ``_mma_kernel`` (everything else): ``tl.dot`` on the tile decoded in registers, which lowers
  to wgmma on sm_90 and to ``mma.sync`` on sm_80.

Both read the 2-bit weights once per tile and decode four codes per 32-bit instruction (which
tile row is which output row: each kernel's docstring). Where the tiles leave SMs idle, K is
split and ``_split_k_sum`` adds the partial sums. The int32 sums are exact; the epilogue is the
reference's float32 steps, ``dot / inv * scale (+ bias)``, with a true division, no fused
multiply-add, and a round-to-nearest-even conversion, so the result is bit-identical to
``ternary_ops.reference``.

Loaded by ``ternary_ops`` where torch has CUDA and Triton imports; nothing else needs it.
"""
from __future__ import annotations

import functools
import re
from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

try:  # Triton's explicit layer, for the sm_90 kernel (Triton >= 3.5)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier,
                                                                  tma, warpgroup_mma,
                                                                  warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
except ImportError:
    gluon = None

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
def _epilogue(acc, offs_m, n, mask_m, mask_n, inv_ptr, scale_ptr, bias_ptr, out_ptr, stride_out,
              INT8: tl.constexpr, SCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The reference's float32 steps on a tile of sums: ``dot / inv * scale (+ bias)`` (act
    "int8") or ``dot * scale (+ bias)``, rounded to out's dtype to nearest even."""
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


@triton.jit
def _mma_kernel(a_ptr, inv_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, part_ptr,
                M, N, K, W_ROWS, stride_a, stride_w, stride_out, K_PER_SPLIT,
                INT8: tl.constexpr, I2: tl.constexpr, SCALE_PER_ROW: tl.constexpr,
                HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                STAGES: tl.constexpr, ASM: tl.constexpr):
    """out[BM, BN] tiles of a @ T^T. INT8: a is the quantized x (int8), int32 sums, epilogue
    dot / inv * scale; else a is x itself (bfloat16 / float16), the codes are converted to its
    dtype, float32 sums, epilogue dot * scale. SPLIT_K > 1: program (tile, s) sums columns
    [s * K_PER_SPLIT, (s + 1) * K_PER_SPLIT) into part[s] instead (see _split_k_sum). i2: row
    ``i`` of a weight tile is byte row ``r0 + i % (BN / 4)`` at bit pair ``i // (BN / 4)``,
    i.e. output row ``(i // (BN / 4)) * R + r0 + i % (BN / 4)`` (docs/DESIGN.md, "Formats")."""
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
    k_first = tl.program_id(1) * K_PER_SPLIT
    k_end = min(K, k_first + K_PER_SPLIT)
    a_ptrs = a_ptr + offs_m[:, None] * stride_a + (k_first + offs_k)[None, :]
    w_ptrs = w_ptr + rows[:, None] * stride_w + (k_first + offs_k)[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.int32 if INT8 else tl.float32)
    for k0 in tl.range(k_first, k_end, BK, num_stages=STAGES):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=mask_m[:, None], other=0)
            p = tl.load(w_ptrs, mask=mask_w[:, None], other=0)
        else:
            kmask = (k0 + offs_k) < k_end
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
    if SPLIT_K > 1:
        part = part_ptr + (tl.program_id(1) * M + offs_m[:, None]) * N + n[None, :]
        tl.store(part, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        _epilogue(acc, offs_m, n, mask_m, mask_n, inv_ptr, scale_ptr, bias_ptr, out_ptr,
                  stride_out, INT8, SCALE_PER_ROW, HAS_BIAS)


@triton.jit
def _split_k_sum(part_ptr, inv_ptr, scale_ptr, bias_ptr, out_ptr, M, N, stride_out,
                 INT8: tl.constexpr, SCALE_PER_ROW: tl.constexpr, HAS_BIAS: tl.constexpr,
                 SPLIT_K: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """out = the epilogue of the sum of part[0 .. SPLIT_K - 1] ([SPLIT_K, M, N] int32 or
    float32). int32 sums are exact in any order, so act="int8" stays bit-identical."""
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    mask_m = offs_m < M
    mask_n = n < N
    mask = mask_m[:, None] & mask_n[None, :]
    ptrs = part_ptr + offs_m[:, None] * N + n[None, :]
    acc = tl.load(ptrs, mask=mask, other=0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0)
    _epilogue(acc, offs_m, n, mask_m, mask_n, inv_ptr, scale_ptr, bias_ptr, out_ptr, stride_out,
              INT8, SCALE_PER_ROW, HAS_BIAS)


if gluon is not None:
    @gluon.constexpr_function
    def _codes_asm(shift, src="$2"):
        """PTX for t = the codes of bit pair shift / 2 of src, one per byte."""
        move = f"shr.b32 t, {src}, {shift}; and.b32 t, t, " if shift else f"and.b32 t, {src}, "
        return move + "0x03030303; "

    @gluon.constexpr_function
    def _int8_weights_asm(shift, src="$1"):
        """PTX for $0 = the codes of bit pair shift / 2 of src times 1, 4, 16 or 32, per byte:
        masked in place, bit pair 3 moved down one bit first to stay below 128."""
        if shift == 6:
            return f"{{ .reg .b32 t; shr.b32 t, {src}, 1; and.b32 $0, t, 0x60606060; }}"
        return f"and.b32 $0, {src}, {0x03030303 << shift:#010x};"

    @gluon.constexpr_function
    def _float_weights_asm(dtype):
        """PTX for $0, $1 = the 16-bit weights (dtype) of the codes in the four bytes of t, two
        per register: code c becomes the bits of B + c, with B = 128 (bfloat16) or 1024
        (float16), whose last mantissa step is 1, less B + 1, exactly."""
        if dtype == gl.bfloat16:
            base, one, sub = "0x43434343", "0x43014301", "sub.rn.bf16x2"
        else:
            base, one, sub = "0x64646464", "0x64016401", "sub.rn.f16x2"
        return (f"prmt.b32 $0, t, {base}, 0x4140; prmt.b32 $1, t, {base}, 0x4342; "
                f"mov.b32 b, {one}; {sub} $0, $0, b; {sub} $1, $1, b;")

    @gluon.jit
    def _split_halves(w, DTYPE: gl.constexpr, JOINED: gl.constexpr):
        """The 16-bit weights of DTYPE held in pairs in int32 ``w`` ([rows, k / 2] or, JOINED,
        [rows, k / 2, 2]), as [rows, k] (or [rows, k, 2]): a register-only view."""
        lo, hi = gl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [w],
                                           dtype=(DTYPE.value, DTYPE.value), is_pure=True,
                                           pack=1)
        d = gl.join(lo, hi)
        if JOINED:
            d = gl.reshape(gl.permute(d, [0, 1, 3, 2]), [d.shape[0], 2 * d.shape[1], 2])
        else:
            d = gl.reshape(d, [d.shape[0], 2 * d.shape[1]])
        return d

    @gluon.jit
    def _decode_i2_sm90(p, SHIFT: gl.constexpr, DTYPE: gl.constexpr):
        """Weights of DTYPE (int8, bfloat16 or float16) from bit pair SHIFT / 2 of p, four
        codes per instruction as in _decode_i2.

        int8 weights are the code c in {0, 1, 2} times 1, 4, 16 or 32 (bit pairs 0 to 3): the
        code masked in place, one instruction for four. The kernel's epilogue divides the sums
        by that factor and subtracts the sum of the activation row, which together make the
        weight c - 1, exactly. p is uint8.

        16-bit weights skip the int-to-float conversion (a quarter of the ALU rate; see
        _float_weights_asm). p is uint16, each element the packed bytes of columns k and k + 1:
        loaded so, a thread's four bytes of one register need no shuffling."""
        if DTYPE == gl.int8:  # output $0; input $1
            out = gl.inline_asm_elementwise(_int8_weights_asm(SHIFT), "=r,r", [p], dtype=gl.int8,
                                            is_pure=True, pack=4)
        else:  # outputs $0, $1 (two 16-bit weights each); input $2 (two byte pairs)
            w = gl.inline_asm_elementwise("{ .reg .b32 t, b; " + _codes_asm(SHIFT)
                                          + _float_weights_asm(DTYPE) + " }", "=r,=r,r", [p],
                                          dtype=gl.int32, is_pure=True, pack=2)
            out = _split_halves(w, DTYPE, False)
        return out

    @gluon.jit
    def _decode_i2_sm90_of(p, shift, H: gl.constexpr, DTYPE: gl.constexpr):
        """Weights of DTYPE from bit pair shift / 2 + H of p, with shift (p's dtype) per element:
        4 j for the half j of the bit pairs that the warp holding it decodes. int8: the code
        times 1 or 4 (H = 0 or 1), masked in place as in _decode_i2_sm90; 16-bit: as there (p
        and shift [rows, k / 2, 2])."""
        if DTYPE == gl.int8:  # output $0; inputs $1, $2
            out = gl.inline_asm_elementwise(
                "{ .reg .b32 s, t; and.b32 s, $2, 0xff; shr.b32 t, $1, s; "
                + _int8_weights_asm(2 * H, "t") + " }", "=r,r,r", [p, shift], dtype=gl.int8,
                is_pure=True, pack=4)
        else:  # outputs $0, $1 (two 16-bit weights each); inputs $2, $3
            w = gl.inline_asm_elementwise(
                "{ .reg .b32 s, t, b; and.b32 s, $3, 0xff; shr.b32 t, $2, s; "
                + _codes_asm(2 * H, "t") + _float_weights_asm(DTYPE) + " }", "=r,=r,r,r",
                [p, shift], dtype=gl.int32, is_pure=True, pack=2)
            out = _split_halves(w, DTYPE, True)
        return out

    @gluon.constexpr_function
    def _packed_layout(int8, bk, num_warps, bn):
        """The layout in which each thread loads the packed bytes whose decoded bit pairs are its
        own elements of wgmma's register A operand (see _wgmma_i2_kernel): packed row 8 w + g
        for warp w (w % (bn / 32) where the warps split the bit pairs) and lane group g, and the
        k columns of that lane in an A fragment. Where the warps split the bit pairs (16 rows per
        warp) the result is [bn / 4, bk, 2]: the packed tile twice, the last index the half of
        the pairs (j) of the warp that holds it."""
        if int8:  # per 32 k: 4 consecutive k at lane column c, and again 16 further
            k_regs = [[0, 1], [0, 2], [0, 16]]
            k_lanes = [[0, 4], [0, 8]]
            step, cols = 32, bk
        else:  # uint16 byte pairs: per 16 k, pair c at lane column c, and again 4 pairs further
            k_regs = [[0, 4]]
            k_lanes = [[0, 1], [0, 2]]
            step, cols = 8, bk // 2
        while step < cols:
            k_regs.append([0, step])
            step *= 2
        rows = [[1, 0], [2, 0], [4, 0]]
        warps = [[w, 0] for w in (8, 16, 32) if w < bn // 4]
        if 16 * num_warps != bn:  # 32 rows per warp: all four bit pairs in its registers
            return gl.DistributedLinearLayout(reg_bases=k_regs, lane_bases=k_lanes + rows,
                                              warp_bases=warps, block_bases=[],
                                              shape=[bn // 4, cols])
        return gl.DistributedLinearLayout(reg_bases=[b + [0] for b in k_regs],
                                          lane_bases=[b + [0] for b in k_lanes + rows],
                                          warp_bases=[b + [0] for b in warps] + [[0, 0, 1]],
                                          block_bases=[], shape=[bn // 4, cols, 2])

    @gluon.constexpr_function
    def _byte_pairs(layout):
        """The packed tile's shared-memory layout read as uint16 byte pairs: the same
        swizzle, whose unit is bytes."""
        return gl.NVMMASharedLayout(layout.swizzle_byte_width, 16, layout.rank)

    @gluon.jit
    def _wgmma_load(step, num_k, a_desc, w_desc, a_smem, p_smem, ready, m0, r0, k_first,
                    BK: gl.constexpr, STAGES: gl.constexpr):
        """Starts the copies of k-step ``step``'s a and packed tiles into its ring slot, whose
        barrier completes when both have landed; none past the last step."""
        slot = step % STAGES
        go = step < num_k
        k = k_first + step * BK
        mbarrier.expect(ready.index(slot), a_desc.block_type.nbytes + w_desc.block_type.nbytes,
                        pred=go)
        tma.async_copy_global_to_shared(w_desc, [r0, k], ready.index(slot), p_smem.index(slot),
                                        pred=go)
        tma.async_copy_global_to_shared(a_desc, [m0, k], ready.index(slot), a_smem.index(slot),
                                        pred=go)

    @gluon.jit
    def _wgmma_k_step(kt, num_k, acc, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0,
                      k_first, ld_p: gl.constexpr, a_op: gl.constexpr, d_ty: gl.constexpr,
                      BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                      WS: gl.constexpr, num_warps: gl.constexpr):
        """k-step kt of _wgmma_i2_kernel: decode its packed tile into the MMA's register
        operand, issue the asynchronous MMA, wait for step kt - 1's, and free the slot that
        step used: start the copies of step kt + STAGES - 1 into it, or with WS tell the
        loading warp (_wgmma_producer) that it may."""
        slot = kt % STAGES
        mbarrier.wait(ready.index(slot), (kt // STAGES) & 1)  # step kt's tiles have landed
        packed = p_smem.index(slot)
        if d_ty != gl.int8:  # 16-bit weights: the bytes in pairs (see _decode_i2_sm90)
            packed = packed._reinterpret(gl.uint16, [BN // 4, BK // 2],
                                         _byte_pairs(p_smem.layout))
        if 16 * num_warps != BN:
            p = packed.load(ld_p)
            # [packed row, k, h, j] -> tile rows (j, w, h, g): a register-only permutation
            d = gl.join(gl.join(_decode_i2_sm90(p, 0, d_ty), _decode_i2_sm90(p, 2, d_ty)),
                        gl.join(_decode_i2_sm90(p, 4, d_ty), _decode_i2_sm90(p, 6, d_ty)))
            d = gl.permute(gl.reshape(d, [BN // 32, 8, BK, 2, 2]), [4, 0, 3, 1, 2])
        else:  # each warp decodes bit pairs 2 j + h of its own j
            p = gl.expand_dims(packed.load(gl.SliceLayout(2, ld_p)), 2)
            j = gl.arange(0, 2, gl.SliceLayout(0, gl.SliceLayout(0, ld_p)))
            shift = gl.expand_dims(gl.expand_dims((4 * j).to(p.dtype), 0), 0)
            p, shift = gl.broadcast(p, shift)
            d = gl.join(_decode_i2_sm90_of(p, shift, 0, d_ty),
                        _decode_i2_sm90_of(p, shift, 1, d_ty))
            # [packed row, k, j, h] -> tile rows (j, w, h, g)
            d = gl.permute(gl.reshape(d, [BN // 32, 8, BK, 2, 2]), [3, 0, 4, 1, 2])
        w = gl.convert_layout(gl.reshape(d, [BN, BK]), a_op, assert_trivial=True)
        acc = warpgroup_mma(w, a_smem.index(slot).permute((1, 0)), acc, use_acc=kt > 0,
                            is_async=True)
        # Step kt - 1 is done: its MMA has read its a tile, and every warp has loaded its
        # packed tile (the warps issued that MMA together), so its slot can be refilled. With
        # two warpgroups, only once both have come this far.
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        if num_warps == 8:
            gl.thread_barrier()
        if WS:
            mbarrier.arrive(empty.index((kt + STAGES - 1) % STAGES), pred=kt > 0)
        else:
            _wgmma_load(kt + STAGES - 1, num_k, a_desc, w_desc, a_smem, p_smem, ready, m0, r0,
                        k_first, BK, STAGES)
        return acc

    @gluon.jit
    def _wgmma_mainloop(num_k, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0, k_first,
                        mma: gl.constexpr, ld_p: gl.constexpr, a_op: gl.constexpr,
                        d_ty: gl.constexpr, acc_ty: gl.constexpr, BM: gl.constexpr,
                        BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                        WS: gl.constexpr, num_warps: gl.constexpr):
        """The k-steps of one tile; returns (its sums, ). Two k-steps per iteration, so
        consecutive steps decode into different registers: an MMA reads its weights'
        registers until the wait after the next step's MMA, and a one-step loop would rewrite
        them in the meantime."""
        acc = gl.zeros((BN, BM), dtype=acc_ty, layout=mma)
        for kt in range(0, num_k - 1, 2):
            acc = _wgmma_k_step(kt, num_k, acc, a_desc, w_desc, a_smem, p_smem, ready, empty,
                                m0, r0, k_first, ld_p, a_op, d_ty, BN, BK, STAGES, WS,
                                num_warps)
            acc = _wgmma_k_step(kt + 1, num_k, acc, a_desc, w_desc, a_smem, p_smem, ready,
                                empty, m0, r0, k_first, ld_p, a_op, d_ty, BN, BK, STAGES, WS,
                                num_warps)
        if num_k % 2 == 1:
            acc = _wgmma_k_step(num_k - 1, num_k, acc, a_desc, w_desc, a_smem, p_smem, ready,
                                empty, m0, r0, k_first, ld_p, a_op, d_ty, BN, BK, STAGES, WS,
                                num_warps)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
        return (acc, )  # warp_specialize takes its default partition's values as a tuple

    @gluon.jit
    def _wgmma_producer(num_k, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0, k_first,
                        BK: gl.constexpr, STAGES: gl.constexpr):
        """With WS, the one warp that loads: each k-step's tiles into its slot as soon as the
        MMA warps have freed it (a fresh slot is free: its first wait is on parity 1)."""
        for kt in range(num_k):
            mbarrier.wait(empty.index(kt % STAGES), ((kt // STAGES) & 1) ^ 1)
            _wgmma_load(kt, num_k, a_desc, w_desc, a_smem, p_smem, ready, m0, r0, k_first, BK,
                        STAGES)

    @gluon.jit
    def _wgmma_i2_kernel(a_desc, w_desc, inv_ptr, asum_ptr, scale_ptr, bias_ptr, out_ptr,
                         part_ptr, M, N, K, R, stride_out, K_PER_SPLIT,
                         INT8: gl.constexpr, SCALE_PER_ROW: gl.constexpr,
                         HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr, BM: gl.constexpr,
                         BN: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
                         WS: gl.constexpr, num_warps: gl.constexpr):
        """The i2 GEMM for sm_90 with the weights as the register operand of the warpgroup MMA.

        The MMA computes the transposed tile ``T[BN, K] @ a[BM, K]^T``: the BN weight rows
        (128, or 64) are its A operand, decoded straight into the registers that hold it, and
        the a tile (q for act="int8", x for act="none") is its B operand in shared memory.
        Decoded weights never touch shared memory, so a k-step moves only the packed bytes (a
        quarter of the decoded tile) and the a tile through it. act="int8" also takes asum, the
        sums of the q rows (see _decode_i2_sm90).

        Which rows: tile row i is bit pair 2 (i // (BN / 2)) + (i // 8) % 2 of packed row 8 ((i
        // 16) % (BN / 32)) + i % 8. With 128 rows on one warpgroup (num_warps = 4), a thread of
        warp w and lane group g holds A rows 16 w + g + 8 h + 64 j (h, j in {0, 1}), so the
        packed byte of row 8 w + g it loads carries exactly its four rows, bit pairs 2 j + h.
        With 16 rows per warp (128 rows on two warpgroups, num_warps = 8, or 64 rows on one),
        warp w holds rows 16 w + g + 8 h, with j = w // (BN / 32): two warps load the same
        packed bytes, each decoding its own two bit pairs, so each warp decodes half as many
        weights and issues half the MMAs: twice the warps decode a 128-row tile, or twice the
        tiles run. Either way each thread decodes only its own bytes.

        Pipeline: the a and packed tiles arrive by TMA (a_desc, w_desc: [M, K] and [R, K],
        zero past their ends) in a ring of STAGES slots, each with a barrier; each k-step
        decodes its tile and issues an asynchronous MMA, then waits only for the previous
        step's, so the decode of step k + 1 overlaps the tensor cores' step k. The MMA warps
        issue the copies themselves, or with WS one more warp does (warp specialization: the
        MMA warps then only wait for a slot and free it). K_PER_SPLIT is a multiple of BK."""
        BR: gl.constexpr = BN // 4
        a_ty: gl.constexpr = a_desc.dtype
        d_ty: gl.constexpr = gl.int8 if INT8 else a_ty  # the decoded weights' type
        KW: gl.constexpr = 32 // d_ty.primitive_bitwidth  # weights per 32-bit register
        # 128 rows on one warpgroup or two, or 64 on one
        gl.static_assert((BN == 128 and (num_warps == 4 or num_warps == 8))
                         or (BN == 64 and num_warps == 4))
        pid_w = gl.program_id(0)
        pid_m = gl.program_id(1)
        pid_s = gl.program_id(2)

        mma: gl.constexpr = gl.NVMMADistributedLayout(
            version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BM, 8 * KW])
        a_op: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=KW)
        ld_p: gl.constexpr = _packed_layout(INT8, BK, num_warps, BN)
        a_smem = gl.allocate_shared_memory(a_ty, [STAGES, BM, BK], a_desc.layout)
        p_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BR, BK], w_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for s in gl.static_range(STAGES):
            mbarrier.init(ready.index(s), count=1)
            mbarrier.init(empty.index(s), count=1)
        fence_async_shared()

        k_first = pid_s * K_PER_SPLIT
        num_k = gl.cdiv(gl.minimum(K - k_first, K_PER_SPLIT), BK)
        m0 = pid_m * BM
        r0 = pid_w * BR
        acc_ty: gl.constexpr = gl.int32 if INT8 else gl.float32
        if WS:
            acc = gl.warp_specialize(
                [(_wgmma_mainloop, (num_k, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0,
                                    k_first, mma, ld_p, a_op, d_ty, acc_ty, BM, BN, BK, STAGES,
                                    WS, num_warps)),
                 (_wgmma_producer, (num_k, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0,
                                    k_first, BK, STAGES))], [1], [24])[0]
        else:
            for s in gl.static_range(STAGES - 1):  # fill the ring
                _wgmma_load(s, num_k, a_desc, w_desc, a_smem, p_smem, ready, m0, r0, k_first,
                            BK, STAGES)
            acc = _wgmma_mainloop(num_k, a_desc, w_desc, a_smem, p_smem, ready, empty, m0, r0,
                                  k_first, mma, ld_p, a_op, d_ty, acc_ty, BM, BN, BK, STAGES,
                                  WS, num_warps)[0]

        # The store. act="int8" stores straight from the MMA's registers; act="none" first
        # gathers eight tile rows g = 0..7 (eight consecutive outputs of one bit pair) per
        # thread. These are the forms in which ptxas keeps the MMAs of the loop above
        # asynchronous: with the other one, or with a zero-initialized accumulator in place of
        # use_acc=False on the first step, it serializes them (C7515,
        # tests/test_cuda_mma_compile.py).
        if INT8:
            st: gl.constexpr = mma
        else:
            st: gl.constexpr = gl.BlockedLayout([8, 1], [1, 32], [num_warps, 1], [0, 1])
            acc = gl.convert_layout(acc, st)
        offs_i = gl.arange(0, BN, gl.SliceLayout(1, st))
        rows_m = pid_m * BM + gl.arange(0, BM, gl.SliceLayout(0, st))
        rows_w = pid_w * BR + ((offs_i // 16) % (BN // 32)) * 8 + offs_i % 8
        pair = 2 * (offs_i // (BN // 2)) + (offs_i // 8) % 2  # the row's bit pair
        n = pair * R + rows_w
        mask_m = rows_m < M
        mask_n = (rows_w < R) & (n < N)
        mask = mask_n[:, None] & mask_m[None, :]
        if INT8:  # the decode's factor (1, 4, 16 or 32; with 16 rows per warp 1 or 4) out
            # (exact), then the code's offset 1
            if 16 * num_warps != BN:
                acc = acc >> (2 * pair - pair // 3)[:, None]
            else:
                acc = acc >> (2 * (pair % 2))[:, None]
            acc -= gl.load(asum_ptr + rows_m, mask=mask_m & (pid_s == 0), other=0)[None, :]
        if SPLIT_K > 1:
            gl.store(part_ptr + (pid_s * M + rows_m[None, :]) * N + n[:, None], acc, mask=mask)
        else:  # _epilogue's steps, transposed
            if SCALE_PER_ROW:
                scale = gl.load(scale_ptr + n, mask=mask_n, other=0.0)[:, None]
            else:
                scale = gl.load(scale_ptr)
            if INT8:
                inv = gl.load(inv_ptr + rows_m, mask=mask_m, other=1.0)
                y = gl.div_rn(acc.to(gl.float32), inv[None, :]) * scale
            else:
                y = acc * scale
            if HAS_BIAS:
                y = y + gl.load(bias_ptr + n, mask=mask_n, other=0.0)[:, None]
            gl.store(out_ptr + rows_m[None, :] * stride_out + n[:, None],
                     y.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


class _Config(NamedTuple):
    kernel: str  # "wgmma" (_wgmma_i2_kernel) or "portable" (_mma_kernel)
    bm: int  # rows of x per tile
    bn: int  # weight rows (outputs) per tile (the sm_90 kernel: 128, or 64 on 4 warps)
    bk: int
    stages: int
    warps: int  # the sm_90 kernel: 4 (one warpgroup) or, with bn = 128, 8 (two, 64 rows each)
    split_k: int
    ws: bool = False  # the sm_90 kernel's warp-specialized form (a loading warp apart)


def _specialization(arg):
    """What Triton's JIT specializes a kernel on for one non-constexpr argument: a tensor's dtype
    and 16-byte alignment; an integer's being 1, a multiple of 16, or 32-bit; a TMA
    descriptor's dtype, block and layout. Anything else, by value."""
    if isinstance(arg, torch.Tensor):
        return arg.dtype, arg.data_ptr() % 16 == 0
    if type(arg) is int:
        return arg == 1, arg % 16 == 0, -(1 << 31) <= arg < 1 << 31
    if gluon is not None and isinstance(arg, TensorDescriptor):
        return arg.base.dtype, tuple(arg.block_shape), arg.layout, arg.padding
    return type(arg), arg


_TRITON_VERSION = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])


def _launch_hooked() -> bool:
    """Whether Triton's launch hooks are set (hook chains with members, or older versions'
    single hooks)."""
    hooks = triton.knobs.runtime
    return any(getattr(h, "calls", h) for h in (hooks.launch_enter_hook, hooks.launch_exit_hook))


class _Launcher:
    """``launcher[grid](*args, **constexprs_and_options)`` launches the Triton kernel ``fn`` as
    ``fn[grid](...)`` does, with less host time. The first launch of each specialization goes
    through the JIT, which compiles (or finds) the kernel; later ones call that compiled kernel
    directly, found by a key of the device, ``_specialization`` of each positional argument and
    the keyword arguments. That skips the JIT's per-call binding of every argument and the
    building of its cache key, most of a launch's host time. The positional arguments are the
    kernel's non-constexpr ones, in order; the keyword arguments are its constexprs and the
    launch options. Under Triton's interpreter, with a Triton before 3.5 (whose compiled
    kernels' call form this does not rely on), or while Triton's launch hooks are set (a
    profiler's), every launch takes the JIT's path."""

    def __init__(self, fn):
        self.fn = fn
        self.direct = isinstance(fn, triton.runtime.JITFunction) and _TRITON_VERSION >= (3, 5)
        self.kernels = {}  # key -> (compiled kernel, the constexpr values after the args)

    def __getitem__(self, grid):
        return functools.partial(self.launch, grid)

    def launch(self, grid, *args, **kwargs):
        if not self.direct or _launch_hooked():
            self.fn[grid](*args, **kwargs)
            return
        key = (torch.cuda.current_device(), *map(_specialization, args), *kwargs.items())
        found = self.kernels.get(key)
        if found is not None:
            kernel, constexprs = found
            kernel[(*grid, 1, 1)](*args, *constexprs)
            return
        kernel = self.fn[grid](*args, **kwargs)
        if kernel is not None:
            constexprs = tuple(kwargs.get(p.name, p.default) for p in self.fn.params[len(args):])
            self.kernels[key] = kernel, constexprs


@functools.lru_cache(maxsize=None)
def _device_info(index: int) -> Tuple[int, int]:
    """(SM count, major compute capability) of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, props.major


def _wgmma_fits(a: torch.Tensor, weight: torch.Tensor) -> bool:
    """The sm_90 kernel's needs on a Hopper GPU (the caller's check): i2 weights, and what TMA
    reads: 16-byte aligned rows (K a multiple of 16) with unit column stride. K need not be a
    multiple of the k-step: TMA fills the last one with zeros, which add nothing to either act's
    sums."""
    if gluon is None or weight.dtype != torch.uint8:
        return False
    k = weight.shape[1]
    if a.dtype == torch.int8 and k >= 1 << 18:  # its sums (to 32 * 2 * 127 * K) overflow int32
        return False
    return (k > 0 and a.stride(1) == 1 and weight.stride(1) == 1
            and (a.stride(0) * a.element_size()) % 16 == 0 and weight.stride(0) % 16 == 0
            and a.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def _ws_launch(c: _Config) -> dict:
    """Launch options of the warp-specialized form. With 128 rows on one warpgroup it runs 8
    warps (4 MMA warps, the loading warp, 3 idle): at 128 registers per thread two programs fit
    on an SM, and the MMA warps then take 232 each (setmaxnreg) while the loading warp gives
    back all but 24. With 16 rows per MMA warp (128 rows on two warpgroups, 12 warps; 64 on
    one, 8) a launch at 80 leaves the MMA warps 104 or 136, enough for tiles of up to 64 rows
    of x, and fits two or three programs per SM; 128-row tiles of x need 128."""
    if not c.ws:
        return {}
    return {"maxnreg": 80 if 16 * c.warps == c.bn and c.bm <= 64 else 128}


def _descriptor(t: torch.Tensor, rows: int, cols: int, block_rows: int, block_cols: int):
    """The TMA descriptor of t[:rows, :cols] (zero past those) in tiles [block_rows,
    block_cols], in the swizzled layout the sm_90 kernel's MMA (a) or its packed-byte loads
    (weights: 16-byte chunks swizzled by row, so the eight rows a warp reads hit distinct
    banks) read."""
    layout = _smem_layout(block_rows, block_cols, t.dtype)
    return TensorDescriptor(t, [rows, cols], [t.stride(0), 1], [block_rows, block_cols], layout)


@functools.lru_cache(maxsize=None)
def _smem_layout(block_rows: int, block_cols: int, dtype: torch.dtype):
    """_descriptor's shared-memory layout, built once per tile shape and dtype (it is on the
    host's path of every call)."""
    ty = {torch.int8: gl.int8, torch.uint8: gl.uint8, torch.bfloat16: gl.bfloat16,
          torch.float16: gl.float16}[dtype]
    return gl.NVMMASharedLayout.get_default_for([block_rows, block_cols], ty)


def _split(tiles: int, k_steps: int, sms: int) -> int:
    """k-splits for a grid of fewer tiles than SMs (the portable kernel): as many as fill two
    waves (one program per SM at a time: two waves were measured faster than one), at most 8,
    with at least 8 k-steps each."""
    if tiles >= sms:
        return 1
    return max(1, min(2 * sms // tiles, 8, k_steps // 8))


def _waves(ctas: int, sms: int) -> int:
    """SM slots of the whole waves that ctas one-per-SM blocks take."""
    return triton.cdiv(ctas, sms) * sms


@functools.lru_cache(maxsize=4096)
def _wgmma_plan(m: int, w_rows: int, k: int, int8: bool, sms: int) -> _Config:
    """The sm_90 kernel's tile (rows of x), split-K and form for K = k, from the H200 sweeps of
    benchmarks/cuda/mma_sweep.py. Its k-step is 128 columns for act="int8", 64 for act="none"
    (the same bytes of x per step); K is long from 64 k-steps (act="int8") or 128 (act="none").

    Tile: the smallest of 16 / 32 / 64 / 128 rows that holds M (128 past that).
    - act="int8" takes 128-row tiles only where K is long: else 64-row tiles, several to an SM,
      hide each other's prologue and epilogue (1.1-1.5x at M = 2048). Where K is short it takes
      32-row tiles instead of 64-row ones wherever those fill at most two waves (one program
      per SM), and halves 32-row tiles that leave more than half of the SMs idle (each halving
      decodes the weights once more).
    - act="none" halves, where K is short, only tiles of 128 rows that leave more than half of
      the SMs idle, and only where the smaller ones then fill half of them (else splitting K
      fills them better).

    Split-K, where the tiles still leave SMs idle:
    - act="int8": where they fill less than all (long K), two thirds (tiles of up to 32 rows)
      or half (the others), into splits of at least 16 k-steps (shorter ones lost to the extra
      pass) that fill two waves; with 128-row tiles (one per SM) fewer where the last wave
      would run under 90% full.
    - act="none", whose k-steps cost more: where they fill less than all with tiles of up to 32
      rows, else less than half, into splits of at least 8 k-steps that fill two waves (one wave
      with tiles of 64 or 128 rows, unless each split still has 64 k-steps).

    Form: act="none" takes the warp-specialized form (its loads leave the decode's warps), and
    so does act="int8" with tiles of up to 32 rows, whose short k-steps wait on their loads, with
    a ring of 8 slots. act="int8" with larger tiles measured the same either way."""
    bn, warps = 128, 4  # 128 weight rows on one warpgroup
    bk = 128 if int8 else 64
    k_steps = triton.cdiv(k, bk)
    w_tiles = triton.cdiv(w_rows, bn // 4)
    natural = next((h for h in (16, 32, 64) if m <= h), 128)
    long_k = k_steps >= (64 if int8 else 128)
    bm = natural
    if int8 and not long_k:
        bm = min(bm, 64)
        if bm == 64 and triton.cdiv(m, 32) * w_tiles <= 2 * sms:
            bm = 32
        elif bm == 32 and w_tiles < sms // 2:
            bm = 16
    elif (not int8 and not long_k and bm == 128 and triton.cdiv(m, bm) * w_tiles < sms // 2
            and triton.cdiv(m, 64) * w_tiles >= sms // 2):
        bm = 64
    tiles = triton.cdiv(m, bm) * w_tiles
    small = int8 and bm <= 32  # the warp-specialized act="int8" form with a deep ring
    if int8:
        few = sms if long_k else 2 * sms // 3 if small else sms // 2
        split = min(2 * sms // tiles, 8, k_steps // 16) if tiles < few else 1
        # One 128-row tile fills an SM: fewer splits where the last wave would be mostly idle.
        while (bm == 128 and tiles * split > sms
               and 10 * tiles * split < 9 * _waves(tiles * split, sms)):
            split -= 1
    elif tiles < sms and (bm <= 32 or tiles < sms // 2):
        split = 2 * sms // tiles
        if bm > 32 and k_steps // split < 64:
            split = sms // tiles
        split = min(split, 8, k_steps // 8)
    else:
        split = 1
    return _Config("wgmma", bm, bn, bk, 8 if small else 4, warps, max(1, split),
                   ws=small or not int8)


def _plan(a: torch.Tensor, weight: torch.Tensor, m: int, int8: bool,
          interpret: bool) -> _Config:
    """The kernel and tile for M rows (benchmarks/results/cuda.md)."""
    i2 = weight.dtype == torch.uint8
    w_rows, k = weight.shape
    sms, major = (1, 0) if interpret else _device_info(a.device.index)
    if major == 9 and _wgmma_fits(a, weight):
        return _wgmma_plan(m, w_rows, k, int8, sms)
    bm, bn, bk, stages, warps = (128, 128, 128, 3, 8) if m >= 256 else (64, 128, 128, 4, 4)
    tiles = triton.cdiv(m, bm) * triton.cdiv(w_rows, bn // 4 if i2 else bn)
    return _Config("portable", bm, bn, bk, stages, warps,
                   _split(tiles, triton.cdiv(k, bk), sms))


_MMA, _SPLIT_K_SUM = _Launcher(_mma_kernel), _Launcher(_split_k_sum)
_WGMMA_I2 = _Launcher(_wgmma_i2_kernel) if gluon is not None else None


def _launch(a, inv, asum, weight, scale, out_features, bias, out, int8: bool, interpret: bool,
            config: Optional[_Config] = None):
    m, n = out.shape
    k = weight.shape[1]
    if m == 0 or n == 0:
        return
    i2 = weight.dtype == torch.uint8
    c = config or _plan(a, weight, m, int8, interpret)
    w_rows = weight.shape[0]
    # split-K: each split's k range is whole k-steps; the partial sums come from the caching
    # allocator like the op's act scratch
    k_per_split = triton.cdiv(triton.cdiv(k, c.bk), c.split_k) * c.bk
    split_k = triton.cdiv(k, k_per_split)
    part = (torch.empty((split_k, m, n), dtype=torch.int32 if int8 else torch.float32,
                        device=out.device) if split_k > 1 else out)
    inv = inv if inv is not None else scale
    bias_arg = bias if bias is not None else scale
    flags = dict(INT8=int8, SCALE_PER_ROW=scale.numel() > 1, HAS_BIAS=bias is not None,
                 SPLIT_K=split_k)
    tiles_w = triton.cdiv(w_rows, c.bn // 4 if i2 else c.bn)
    if c.kernel == "wgmma":
        a_desc = _descriptor(a, m, k, c.bm, c.bk)
        w_desc = _descriptor(weight, w_rows, k, c.bn // 4, c.bk)
        _WGMMA_I2[(tiles_w, triton.cdiv(m, c.bm), split_k)](
            a_desc, w_desc, inv, asum if int8 else scale, scale, bias_arg, out, part, m,
            out_features, k, w_rows, out.stride(0), k_per_split, **flags, BM=c.bm, BN=c.bn,
            BK=c.bk, STAGES=c.stages, WS=c.ws, num_warps=c.warps, enable_fp_fusion=False,
            **_ws_launch(c))
    else:
        _MMA[(triton.cdiv(m, c.bm) * tiles_w, split_k)](
            a, inv, weight, scale, bias_arg, out, part, m, out_features, k, w_rows, a.stride(0),
            weight.stride(0), out.stride(0), k_per_split, I2=i2, EVEN_K=k % c.bk == 0, **flags,
            BM=c.bm, BN=c.bn, BK=c.bk, GROUP_M=8, STAGES=c.stages, ASM=not interpret,
            num_warps=c.warps, enable_fp_fusion=False)
    if split_k > 1:
        flags.pop("SPLIT_K")
        _SPLIT_K_SUM[(triton.cdiv(m, 64), triton.cdiv(n, 64))](
            part, inv, scale, bias_arg, out, m, n, out.stride(0), **flags, SPLIT_K=split_k,
            BM=64, BN=64, num_warps=4, enable_fp_fusion=False)


def mma_int8(q: torch.Tensor, inv: torch.Tensor, qsum: torch.Tensor, weight: torch.Tensor,
             scale: torch.Tensor, out_features: int, bias, out: torch.Tensor, *,
             interpret: bool = False) -> None:
    """``out[m, n] = (q[m] . T[n]) / inv[m] * scale[n] (+ bias[n])`` in out's dtype, with T the
    ternary codes of i2 ``weight`` (uint8 ``[ceil(N / 4), K]``) or the int8 ``weight`` ``[N,
    K]``; ``q`` int8 ``[M, >= K]`` (its columns past K are not read), ``inv`` / ``scale`` /
    ``bias`` float32, ``qsum`` int32 ``[M]``, the sums of q's rows over K (the quantize
    pre-pass gives them), ``out`` ``[M, N]`` with unit column stride. ``interpret``: decode
    without inline PTX (for Triton's CPU interpreter)."""
    _launch(q, inv, qsum, weight, scale, out_features, bias, out, True, interpret)


def mma_float(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out_features: int,
              bias, out: torch.Tensor, *, interpret: bool = False) -> None:
    """act="none": ``out[m, n] = (x[m] . T[n]) * scale[n] (+ bias[n])`` with bfloat16 or
    float16 ``x`` ``[M, K]`` (unit column stride), float32 sums; the rest as
    :func:`mma_int8`."""
    _launch(x, None, None, weight, scale, out_features, bias, out, False, interpret)


@torch.library.impl("ternary::_mma_int8", "CUDA")
def _mma_int8_cuda(q, inv, qsum, weight, scale, out_features, bias, out):
    mma_int8(q, inv, qsum, weight, scale, out_features, bias, out)


@torch.library.impl("ternary::_mma_float", "CUDA")
def _mma_float_cuda(x, weight, scale, out_features, bias, out):
    mma_float(x, weight, scale, out_features, bias, out)
