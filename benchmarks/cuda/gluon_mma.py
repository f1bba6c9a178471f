"""Candidate sm_90 kernel for the act="int8" i2 GEMM at large M, in Gluon (Triton's explicit
layer), measured against the shipped kernel (ternary_ops/cuda_mma.py) before it may replace it.

Why: in the shipped Triton kernel the decoded weight tile is the B operand of `tl.dot`; Triton
stores it to shared memory and then waits for each warpgroup MMA to finish before the next
decode (`warp_group_dot_wait {pendings = 0}` in its TTGIR), so the decode never overlaps the
tensor cores. Here the loop is written out:

* q tiles and packed weight tiles arrive by cp.async in a ring of STAGES slots;
* each step decodes its packed tile (four codes per PTX instruction, one 32-row slice per bit
  pair, no shuffles) into one of two decoded buffers, fences, and issues an asynchronous
  warpgroup MMA, then waits for the *previous* MMA only (`num_outstanding=1`): the tensor
  cores run step k while the warps decode step k + 1.

Row i of a BN-row weight tile is output row (i // BR) * R + r0 + i % BR (BR = BN / 4), as in
the shipped kernel, so the epilogue and its bits are the same.

Usage on a Hopper GPU: python benchmarks/cuda/gluon_mma.py   (checks against the reference,
then times it, the shipped op and dense bf16 on the 8B/70B layer shapes)
"""
import sys

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma,
                                                              warpgroup_mma_wait)

# bench.py sits beside this script (run as benchmarks/cuda/gluon_mma.py)
from bench import time_rotating


@gluon.jit
def _decode_i2(p, SHIFT: gl.constexpr):
    """int8 weights (-1, 0, +1) from bit pair SHIFT / 2 of each byte of p (uint8)."""
    if SHIFT == 0:
        asm: gl.constexpr = "and.b32 t, $1, 0x03030303;"
    elif SHIFT == 2:
        asm: gl.constexpr = "shr.b32 t, $1, 2; and.b32 t, t, 0x03030303;"
    elif SHIFT == 4:
        asm: gl.constexpr = "shr.b32 t, $1, 4; and.b32 t, t, 0x03030303;"
    else:
        asm: gl.constexpr = "shr.b32 t, $1, 6; and.b32 t, t, 0x03030303;"
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t; " + asm + " add.u32 t, t, 0x7F7F7F7F; xor.b32 $0, t, 0x80808080; }",
        "=r,r", [p], dtype=gl.int8, is_pure=True, pack=4)


@gluon.jit
def gluon_i2_int8_kernel(q_ptr, inv_ptr, w_ptr, scale_ptr, out_ptr,
                         M, N, K, R, stride_q, stride_w, stride_out,
                         BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                         STAGES: gl.constexpr, num_warps: gl.constexpr):
    BR: gl.constexpr = BN // 4
    pid_w = gl.program_id(0)
    pid_m = gl.program_id(1)

    # register layouts for the cp.async sources and the packed tile (16 bytes per thread)
    ld: gl.constexpr = gl.BlockedLayout([1, 16], [32 * 16 // BK, BK // 16], [num_warps, 1], [1, 0])
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BN, 32])
    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BK], gl.int8)
    w_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BN, BK], gl.int8)
    p_sl: gl.constexpr = gl.SwizzledSharedLayout(vec=16, per_phase=1, max_phase=1, order=[1, 0])

    q_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BM, BK], q_sl)
    p_smem = gl.allocate_shared_memory(gl.uint8, [STAGES, BR, BK], p_sl)
    w_smem = gl.allocate_shared_memory(gl.int8, [2, BN, BK], w_sl)

    offs_m = pid_m * BM + gl.arange(0, BM, gl.SliceLayout(1, ld))
    offs_r = pid_w * BR + gl.arange(0, BR, gl.SliceLayout(1, ld))
    offs_k = gl.arange(0, BK, gl.SliceLayout(0, ld))
    q_ptrs = q_ptr + offs_m[:, None] * stride_q + offs_k[None, :]
    w_ptrs = w_ptr + offs_r[:, None] * stride_w + offs_k[None, :]
    mask_m = (offs_m < M)[:, None]
    mask_r = (offs_r < R)[:, None]
    num_k = gl.cdiv(K, BK)

    for s in gl.static_range(STAGES - 1):  # fill the ring
        kmask = (s * BK + offs_k < K)[None, :]
        cp.async_copy_global_to_shared(q_smem.index(s), q_ptrs + s * BK, mask=mask_m & kmask)
        cp.async_copy_global_to_shared(p_smem.index(s), w_ptrs + s * BK, mask=mask_r & kmask)
        cp.commit_group()

    acc = gl.zeros((BM, BN), dtype=gl.int32, layout=mma)
    for kt in range(num_k):
        slot = kt % STAGES
        buf = kt % 2
        cp.wait_group(STAGES - 2)  # this thread's copies of step kt have landed
        gl.thread_barrier()  # and every other thread's
        p = p_smem.index(slot).load(ld)
        dec = w_smem.index(buf)
        for s in gl.static_range(4):
            dec.slice(s * BR, BR, dim=0).store(_decode_i2(p, 2 * s))
        fence_async_shared()
        gl.thread_barrier()
        acc = warpgroup_mma(q_smem.index(slot), dec.permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))  # step kt - 1 is done
        nxt = kt + STAGES - 1  # into the slot step kt - 1 used
        kmask = (nxt * BK + offs_k < K)[None, :]
        cp.async_copy_global_to_shared(q_smem.index(nxt % STAGES), q_ptrs + nxt * BK,
                                       mask=mask_m & kmask)
        cp.async_copy_global_to_shared(p_smem.index(nxt % STAGES), w_ptrs + nxt * BK,
                                       mask=mask_r & kmask)
        cp.commit_group()
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    cp.wait_group(0)

    rows_m = pid_m * BM + gl.arange(0, BM, gl.SliceLayout(1, mma))
    offs_i = gl.arange(0, BN, gl.SliceLayout(0, mma))
    rows_w = pid_w * BR + offs_i % BR
    n = (offs_i // BR) * R + rows_w
    mask_n = (rows_w < R) & (n < N)
    mask_o = (rows_m < M)[:, None] & mask_n[None, :]
    inv = gl.load(inv_ptr + rows_m, mask=rows_m < M, other=1.0)
    scale = gl.load(scale_ptr + n, mask=mask_n, other=0.0)
    y = gl.div_rn(acc.to(gl.float32), inv[:, None]) * scale[None, :]
    gl.store(out_ptr + rows_m[:, None] * stride_out + n[None, :], y.to(gl.bfloat16), mask=mask_o)


def gluon_i2_int8(q, inv, weight, scale, n, out, BM=128, BN=128, BK=128, STAGES=3, num_warps=8):
    """out [M, N] bfloat16 from q int8 [M, >= K], inv [M], i2 weight [R, K], per-row scale [N]."""
    m = out.shape[0]
    k = weight.shape[1]
    r = weight.shape[0]
    grid = (triton.cdiv(r, BN // 4), triton.cdiv(m, BM))
    gluon_i2_int8_kernel[grid](q, inv, weight, scale, out, m, n, k, r, q.stride(0),
                               weight.stride(0), out.stride(0), BM, BN, BK, STAGES,
                               num_warps=num_warps)


def _us(fn, copies):
    """Median microseconds per call of fn(copy), as bench.py times the shipped ops."""
    return time_rotating(fn, copies, None, None)[0] * 1e6


def main():
    from ternary_ops import reference
    from ternary_ops.formats import pack_i2

    torch.manual_seed(0)
    bad = 0
    for (m, n, k) in [(128, 512, 256), (300, 1000, 4100), (257, 77, 8191), (2048, 4096, 4096)]:
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        codes = torch.randint(-1, 2, (n, k), dtype=torch.int8, device="cuda")
        w = pack_i2(codes)
        scale = torch.rand(n, device="cuda") + 0.5
        want = reference.linear_i2(x, w, scale, n, None, "int8")
        q, inv = reference.quantize_activations(x)
        kp = (k + 63) // 64 * 64
        qp = torch.zeros(m, kp, dtype=torch.int8, device="cuda")
        qp[:, :k] = q.to(torch.int8)
        out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
        gluon_i2_int8(qp, inv.reshape(-1).contiguous(), w, scale, n, out)
        if not torch.equal(out, want):
            bad += 1
            print("MISMATCH", (m, n, k), (out.float() - want.float()).abs().max().item())
    print("gluon kernel vs reference: mismatches", bad, flush=True)
    for (n, k) in [(14336, 4096), (4096, 14336), (28672, 8192), (8192, 28672)]:
        r = (n + 3) // 4
        ws = [torch.randint(0, 256, (r, k), dtype=torch.uint8, device="cuda") & 0x55
              for _ in range(max(2, min(24, (256 << 20) // (r * k) + 1)))]
        wd = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") for _ in range(3)]
        scale = torch.rand(n, device="cuda") + 0.5
        for m in (128, 512, 2048):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            q = torch.randint(-127, 128, (m, (k + 63) // 64 * 64), dtype=torch.int8,
                              device="cuda")
            inv = torch.rand(m, device="cuda") + 1
            out = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
            dense = _us(lambda w: torch.nn.functional.linear(x, w), wd)
            shipped = _us(lambda w: torch.ops.ternary.linear_i2(x, w, scale, n, None, "int8"),
                          ws)
            line = f"{n}x{k} M={m}: dense {dense:.1f} us, shipped op {shipped:.1f} " \
                   f"({dense / shipped:.2f}x)"
            for cfg in (dict(BM=128, BN=128, STAGES=3, num_warps=8),
                        dict(BM=128, BN=128, STAGES=4, num_warps=4),
                        dict(BM=64, BN=128, STAGES=4, num_warps=4)):
                try:
                    us = _us(lambda w: gluon_i2_int8(q, inv, w, scale, n, out, **cfg), ws)
                    line += f" | gluon {tuple(cfg.values())} {us:.1f} ({dense / us:.2f}x)"
                except Exception as e:  # a configuration that does not compile
                    line += f" | gluon {tuple(cfg.values())} failed: {type(e).__name__}"
            print(line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
