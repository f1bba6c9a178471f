"""The sm_90 GEMM of ternary_ops/cuda_mma.py compiled for Hopper without a GPU, for every tile
and form the plan or the tile sweep can pick:

* its PTX never writes a register that an asynchronous warpgroup MMA in flight reads as its A
  operand (the decoded weights) before the wait that retires that MMA. PTX leaves such a write
  undefined; on the GPU it corrupted whole MMA row blocks, silently.
* ptxas (bundled with Triton) neither serializes its MMAs nor spills. Both cost a large share
  of its speed, and ptxas only says so in its verbose output (C7515 "wgmma.mma_async
  instructions are serialized", for a cause in the code, or C7512, for lack of registers).

Both forms of the kernel, warp-specialized or not, on 128 weight rows (one warpgroup or two)
or 64. And the key by which the module's launchers reuse compiled kernels."""
import os
import re
import subprocess

import pytest

gluon = pytest.importorskip("triton.experimental.gluon", reason="needs Triton >= 3.5")
import triton  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from ternary_ops import cuda_mma  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
ARGS = ["a_desc", "w_desc", "inv_ptr", "asum_ptr", "scale_ptr", "bias_ptr", "out_ptr",
        "part_ptr", "M", "N", "K", "R", "stride_out", "K_PER_SPLIT"]


def _written(line):
    """The registers a PTX line writes (its first operand; every instruction's first operand in
    an inline-asm block)."""
    if line.startswith("{"):
        found = (re.match(r"\s*[a-z][\w.]*\s+(%r\d+)", ins) for ins in line.strip("{} ").split(";"))
        return {m.group(1) for m in found if m}
    if line.startswith(("st.", "wgmma", "bar.", "cp.", "@", "bra", "//", "ret")):
        return set()
    m = re.match(r"[a-z][\w.:]*\s+(\{[^}]*\}|%r\d+)", line)
    return set(re.findall(r"%r\d+", m.group(1))) if m else set()


def _in_flight_operand_writes(ptx):
    """Writes to the A-operand registers of an MMA not yet retired by a wgmma.wait_group, over
    three passes of the main loop (the block holding the first MMA up to its back branch)."""
    lines = [line.strip() for line in ptx.splitlines()]
    first = next(i for i, line in enumerate(lines) if line.startswith("wgmma.mma_async"))
    start = max(i for i in range(first) if re.match(r"\$L__BB\d+_\d+:", lines[i]))
    label = re.match(r"(\$L__BB\d+_\d+):", lines[start]).group(1)
    end = next(i for i in range(first, len(lines))
               if re.search(r"bra(\.uni)?\s+" + re.escape(label) + ";", lines[i]))
    groups, pending, committed, bad = {}, set(), 0, []
    for line in lines[start:end + 1] * 3:
        if line.startswith("wgmma.mma_async"):
            a_regs = re.search(r"\},\s*\{([^}]*)\}", line).group(1)
            pending |= {r.strip() for r in a_regs.split(",")}
        elif line.startswith("wgmma.commit_group"):
            groups[committed], pending, committed = pending, set(), committed + 1
        elif line.startswith("wgmma.wait_group"):
            keep = int(re.search(r"(\d+);", line).group(1))
            groups = {g: regs for g, regs in groups.items() if g >= committed - keep}
        elif groups and _written(line) & set().union(*groups.values()):
            bad.append(line[:100])
    return bad


def _descriptor_type(ty, block):
    """The signature string of a TMA descriptor as _descriptor makes it."""
    gl_ty = {"i8": gl.int8, "u8": gl.uint8, "bf16": gl.bfloat16, "fp16": gl.float16}[ty]
    layout = gl.NVMMASharedLayout.get_default_for(block, gl_ty)
    return f"tensordesc<{ty}{block},{layout!r}>"


def _sm90_ptx(a_ty, out_ty, int8, bm, warps, split, bias, ws=False, stages=4, bn=128):
    acc_ty = "*i32" if int8 else "*fp32"
    bk = 128 if int8 else 64
    config = cuda_mma._Config("wgmma", bm, bn, bk, stages, warps, split, ws)
    types = [_descriptor_type(a_ty.lstrip("*"), [bm, bk]), _descriptor_type("u8", [bn // 4, bk]),
             "*fp32", acc_ty, "*fp32", "*fp32", out_ty, acc_ty]
    sig = dict(zip(ARGS, types + ["i32"] * 6))
    constexprs = dict(INT8=int8, SCALE_PER_ROW=not bias, HAS_BIAS=bias, SPLIT_K=split, BM=bm,
                      BN=bn, BK=bk, STAGES=stages, WS=ws, num_warps=warps)
    sig.update({k: "constexpr" for k in constexprs})
    # what Triton's specialization gives pointers and 16-divisible sizes at launch
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(2, len(ARGS))}
    kernel = triton.compile(GluonASTSource(cuda_mma._wgmma_i2_kernel, sig, constexprs, attrs),
                            target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": warps, "enable_fp_fusion": False,
                                     **cuda_mma._ws_launch(config)})
    return kernel.asm["ptx"]


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="Triton without its bundled ptxas")
@pytest.mark.parametrize("act,a_ty,out_ty", [("int8", "*i8", "*bf16"), ("int8", "*i8", "*fp16"),
                                              ("int8", "*i8", "*fp32"),
                                              ("none", "*bf16", "*bf16"),
                                              ("none", "*fp16", "*fp16")])
def test_sm90_kernel_keeps_its_mmas_asynchronous_and_safe(act, a_ty, out_ty, tmp_path):
    int8 = act == "int8"
    configs = [(bm, 128, 4, split, ws, 4) for bm in (16, 32, 64, 128) for split in (1, 2)
               for ws in (False, True)]
    configs += [(bm, 128, 4, split, True, 8) for bm in (16, 32) for split in (1, 2)]  # deep ring
    # 16 rows per warp (128 rows on two warpgroups, 64 on one): every tile, both forms, the
    # warp-specialized one with either ring
    configs += [(bm, bn, bn // 16, 2 if bm == 32 else 1, ws, stages)
                for bm in (16, 32, 64, 128) for bn in (128, 64)
                for ws, stages in ((False, 4), (True, 4), (True, 8))]
    bad = []
    for i, (bm, bn, warps, split, ws, stages) in enumerate(configs):
        ptx = _sm90_ptx(a_ty, out_ty, int8, bm, warps, split, bias=i % 4 < 2, ws=ws,
                        stages=stages, bn=bn)
        what = (bm, bn, warps, split, ws, stages)
        src = tmp_path / "k.ptx"
        src.write_text(ptx)
        r = subprocess.run([PTXAS, "-arch=sm_90a", "-v", str(src), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert ptx.count("wgmma.mma_async") > 0
        writes = _in_flight_operand_writes(ptx)
        if writes:
            bad.append((what, "writes in-flight operand registers", writes[:2]))
        spills = [int(s) for s in re.findall(r"(\d+) bytes spill stores", r.stderr)]
        serialized = [c for c in ("C7515", "C7512") if c in r.stderr]
        if serialized or any(spills):
            bad.append((what, spills, serialized))
    assert not bad, f"{act} x {a_ty} out {out_ty}: {bad}"


@pytest.mark.parametrize("int8", [True, False], ids=["int8", "none"])
def test_sm90_plan_picks_only_compiled_tiles_and_sound_splits(int8):
    """Every configuration _wgmma_plan gives, over row counts, weight shapes and SM counts of
    Hopper parts, is one the test above compiles (tile heights 16-128, 4 warps; the
    warp-specialized form for act="none", 4 stages, and for act="int8" tiles of up to 32 rows,
    8 stages; act="int8" otherwise the other form with 4), holds M in as few tiles as the rule
    allows, and splits K only into pieces of at least 16 (act="int8") or 8 (act="none") k-steps
    that fill at most two waves of programs. act="int8" takes 128-row tiles only with 64 k-steps
    or more, and splits them only into waves whose last is at least 90% full."""
    bk = 128 if int8 else 64
    for sms in (132, 114, 78):
        for m in (9, 16, 17, 32, 33, 64, 65, 100, 128, 129, 256, 512, 2048, 4099):
            for n, k in ((2560, 2560), (6912, 2560), (2560, 6912), (4096, 4096), (14336, 4096),
                         (4096, 14336), (28672, 8192), (8192, 28672), (300, 2048), (9, 384)):
                w_rows, k_steps = (n + 3) // 4, k // bk
                c = cuda_mma._wgmma_plan(m, w_rows, k, int8, sms)
                what = (sms, m, n, k, c)
                small = int8 and c.bm <= 32
                assert (c.kernel, c.bn, c.bk, c.warps) == ("wgmma", 128, bk, 4), what
                assert c.stages == (8 if small else 4) and c.ws == (small or not int8), what
                natural = next((h for h in (16, 32, 64) if m <= h), 128)
                fewest = max(16, natural // 4 if int8 else natural // 2)  # int8: 128 -> 32
                assert c.bm in (16, 32, 64, 128) and fewest <= c.bm <= natural, what
                tiles = triton.cdiv(m, c.bm) * triton.cdiv(w_rows, 32)
                assert 1 <= c.split_k <= 8, what
                if c.split_k > 1:
                    assert k_steps // c.split_k >= (16 if int8 else 8), what
                    assert tiles < sms and tiles * c.split_k <= 2 * sms, what
                if int8 and c.bm == 128:
                    assert triton.cdiv(k, bk) >= 64, what
                    programs = tiles * c.split_k
                    if c.split_k > 1 and programs > sms:
                        assert 10 * programs >= 9 * triton.cdiv(programs, sms) * sms, what


def test_launch_key_separates_what_the_jit_specializes_on():
    """cuda_mma's launchers reuse a compiled kernel for calls of equal keys (test_cuda.py runs
    them): the key tells apart what Triton's JIT compiles a kernel apart for, and is equal
    where the JIT's specialization is. Triton's launch hooks (a profiler's) are noticed."""
    import torch

    spec = cuda_mma._specialization
    x = torch.zeros(64)
    assert spec(x) == spec(x[4:]) != spec(x[1:])  # 16-byte aligned or not
    assert spec(x) != spec(x.to(torch.int32))
    assert spec(16) == spec(4096) != spec(17) == spec(33) != spec(1)
    assert spec(16) != spec(1 << 32)
    a = torch.zeros(256, 256, dtype=torch.int8)
    d = cuda_mma._descriptor
    assert spec(d(a, 256, 256, 64, 128)) == spec(d(a, 100, 256, 64, 128)) != spec(
        d(a, 256, 256, 128, 128))
    runtime = triton.knobs.runtime
    assert not cuda_mma._launch_hooked()
    hook = lambda metadata: None  # noqa: E731
    chain = runtime.launch_enter_hook
    if hasattr(chain, "add"):  # a chain of hooks (Triton >= 3.6)
        chain.add(hook)
        undo = lambda: chain.remove(hook)  # noqa: E731
    else:  # one hook or None
        runtime.launch_enter_hook = hook
        undo = lambda: setattr(runtime, "launch_enter_hook", chain)  # noqa: E731
    try:
        assert cuda_mma._launch_hooked()
    finally:
        undo()
    assert not cuda_mma._launch_hooked()
