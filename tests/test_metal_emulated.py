"""The Metal kernels (csrc/metal/*.metal) executed on the CPU under emulation.

No Apple GPU exists on our machines, so the exact .metal text is compiled as C++ against
tests/metal_emu/metal_emu.h and every kernel instance runs over its grid with the threadgroup
sizes, grids and threadgroup memory the MPS glue uses (csrc/metal/ternary_metal_config.h),
threads of a group as fibers, barriers and simdgroup reductions real. What this proves: the
kernels' indexing, tails, staging and arithmetic. act="int8" results must match the reference
bit for bit (integer dots, then the float32 epilogue of docs/DESIGN.md); act="none" to float
rounding. The string the glue hands the Metal compiler (tools/metal_source.py: the .metal files
with csrc/ternary_format.h inlined) is checked to be self-contained and to compile the same
way. What it does not prove: the Objective-C++ glue (type-checked only, below) and the GPU
itself (tests/test_mps.py, on a Mac).
"""
import ctypes
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EMU = ROOT / "tests" / "metal_emu"
CSRC = ROOT / "csrc"
METAL = CSRC / "metal"
sys.path.insert(0, str(ROOT / "tools"))
import metal_source  # noqa: E402  (the embedding setup.py ships)

DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
MAX_SMEM = 32768  # maxThreadgroupMemoryLength of Apple GPUs


# How the emulated kernels are compiled: Metal's integer model (signed char), no FMA contraction.
EMU_FLAGS = ["-std=c++17", "-fsigned-char", "-fno-strict-aliasing", "-ffp-contract=off", "-Wall",
             "-Wextra", "-Werror", "-Wno-attributes"]


def cxx_or_skip():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx}) to build the Metal emulation harness")
    return cxx


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    cxx = cxx_or_skip()
    out = tmp_path_factory.mktemp("metal_emu") / "libmetal_emu.so"
    cmd = [cxx, "-O2", "-fPIC", "-shared"] + EMU_FLAGS + [
        f"-I{EMU}", f"-I{CSRC}", str(EMU / "harness.cpp"), "-o", str(out)]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(out))
    lib.tmetal_kernel_name.restype = ctypes.c_char_p
    L, P, I = ctypes.c_long, ctypes.c_void_p, ctypes.c_int
    lib.tmetal_linear.argtypes = [I, I, I, I, L, L, L, P, P, L, P, I, I, P, I, P, ctypes.c_ulong,
                                  ctypes.c_uint, ctypes.c_char_p, I, ctypes.c_char_p, I]
    lib.tmetal_selftest.argtypes = [I, ctypes.c_char_p, I]
    return lib


# ---- formats and reference semantics (docs/DESIGN.md), self-contained ----

def pack_i2(t):
    """int8 [N, K] in {-1,0,1} -> uint8 [ceil(N/4), K]: byte [j, k] holds rows j + r*R, bits 2r."""
    n, k = t.shape
    r = (n + 3) // 4
    codes = torch.ones(4 * r, k, dtype=torch.int32)  # padding rows: code 01 (zero)
    codes[:n] = t.to(torch.int32) + 1
    packed = torch.zeros(r, k, dtype=torch.int32)
    for b in range(4):
        packed |= codes[b * r:(b + 1) * r] << (2 * b)
    return packed.to(torch.uint8)


def quantize_rows(x):
    """act="int8": per-row inv = 127 / max|x| (clamped at 1e-5), q = round_half_even(x * inv)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    inv = torch.full_like(amax, 127.0) / amax  # a true division; 127.0 / t is reciprocal * 127
    return torch.round(xf * inv).clamp(-128, 127), inv


def reference(x, t, scale, bias, act):
    """y in x's dtype. act="int8" is computed in the exact order of the kernels' epilogue."""
    s = scale.float().reshape(-1)
    if act == "int8":
        q, inv = quantize_rows(x)
        dot = (q.to(torch.int64) @ t.to(torch.int64).T).float()
        y = dot / inv * s
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)
    y = (x.double() @ t.double().T) * s.double()
    if bias is not None:
        y = y + bias.double()
    return y


def make_case(gen, M, N, K, dtype, per_channel=True, bias_dtype=None, zero_frac=0.3):
    t = torch.randint(-1, 2, (N, K), generator=gen, dtype=torch.int8)
    t[torch.rand(N, K, generator=gen) < zero_frac] = 0
    x = (torch.randn(M, K, generator=gen) * torch.rand(M, 1, generator=gen) * 4).to(dtype)
    scale = (torch.rand(N if per_channel else (), generator=gen) + 0.5).float()
    bias = None if bias_dtype is None else torch.randn(N, generator=gen).to(bias_dtype)
    return x, t, scale, bias


def run(emu, fmt, act, x, t, scale, bias, path=-1, max_smem=MAX_SMEM, w_shift=0, seed=1):
    """Runs the kernel the MPS glue would pick (path -1) or a forced one (0 matvec, 1 matmul)."""
    M, K = x.shape
    N = t.shape[0]
    w = (pack_i2(t) if fmt == "i2" else t).contiguous()
    x = x.contiguous()
    scale = scale.contiguous()
    y = torch.empty(M, N, dtype=x.dtype)
    used = ctypes.create_string_buffer(64)
    err = ctypes.create_string_buffer(512)
    rc = emu.tmetal_linear(
        path, int(fmt == "i2"), int(act == "int8"), DTYPES[x.dtype], M, N, K,
        x.data_ptr(), w.data_ptr(), w_shift, scale.data_ptr(), DTYPES[scale.dtype],
        int(scale.numel() > 1 or scale.dim() == 1), None if bias is None else bias.data_ptr(),
        DTYPES[bias.dtype] if bias is not None else 0, y.data_ptr(), max_smem, seed,
        used, 64, err, 512)
    assert rc == 0, err.value.decode()
    return y, used.value.decode()


def check(y, x, t, scale, bias, act):
    ref = reference(x, t, scale, bias, act)
    if act == "int8":
        # Integer dots and the float32 epilogue are exact: bit for bit.
        assert torch.equal(y.view(torch.int16 if y.dtype != torch.float32 else torch.int32),
                           ref.view(torch.int16 if ref.dtype != torch.float32 else torch.int32)), (
            f"max |diff| {(y.float() - ref.float()).abs().max().item()}")
        return
    s = scale.double().abs().reshape(-1)
    bound = (x.double().abs() @ t.double().abs().T) * s  # scale of the accumulated terms
    rel = {torch.float32: 2e-7, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[y.dtype]
    # A subnormal result rounds to the dtype's subnormal step, not to `rel` of itself.
    subnormal_step = torch.finfo(y.dtype).tiny * torch.finfo(y.dtype).eps
    tol = rel * ref.abs() + 1e-6 * bound + subnormal_step / 2 + 1e-30
    diff = (y.double() - ref).abs()
    assert bool((diff <= tol).all()), f"max |diff| {diff.max().item()} (tol {tol.max().item()})"


FORMATS = ["i2", "i8"]
ACTS = ["int8", "none"]
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# N, K: ones, odd sizes around every block (16-byte chunks, 32 lanes x 16 = 512 per step, the
# matmul's 32-wide tiles, i2's 4 rows per byte); K > 512 makes lanes loop.
MV_SHAPES = [(1, 1), (3, 5), (5, 3), (17, 63), (63, 65), (65, 257), (257, 17), (33, 1040),
             (7, 1041), (4, 16), (130, 48)]
MM_SHAPES = [(1, 1), (3, 5), (17, 63), (65, 257), (257, 33), (5, 1041), (33, 32)]
MS = [2, 5, 33]


def test_kernel_table(emu):
    names = {emu.tmetal_kernel_name(i).decode() for i in range(emu.tmetal_kernel_count())}
    want = {f"ternary_{p}_{f}_{a}_{d}" for p, f, a, d in
            itertools.product(["mv", "mm"], FORMATS, ACTS, ["f32", "f16", "bf16"])}
    assert names == want
    # Every instance is also declared to Metal under the same name.
    src = (METAL / "ternary_linear.metal").read_text()
    assert re.search(r"host_name\(TERNARY_STR\(ternary_##path##_##fmt##_##act##_##tname\)\)", src)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: SUFFIX[d])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matvec(emu, fmt, act, dtype, fresh_seed):
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (N, K) in enumerate(MV_SHAPES):
        x, t, scale, bias = make_case(gen, 1, N, K, dtype, per_channel=i % 2 == 0,
                                      bias_dtype=[None, dtype, torch.float32][i % 3])
        y, used = run(emu, fmt, act, x, t, scale, bias, seed=i)
        assert used == f"ternary_mv_{fmt}_{act}_{SUFFIX[dtype]}"
        check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: SUFFIX[d])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul(emu, fmt, act, dtype, fresh_seed):
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (N, K) in enumerate(MM_SHAPES):
        M = MS[i % len(MS)]
        x, t, scale, bias = make_case(gen, M, N, K, dtype, per_channel=i % 2 == 1,
                                      bias_dtype=[dtype, None, torch.bfloat16][i % 3])
        y, used = run(emu, fmt, act, x, t, scale, bias, seed=i)
        assert used == f"ternary_mm_{fmt}_{act}_{SUFFIX[dtype]}"
        check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_serves_m1(emu, fmt, act):
    """The matmul kernel is correct at M = 1 too: it serves decode when K is too long to stage."""
    gen = torch.Generator().manual_seed(7)
    x, t, scale, bias = make_case(gen, 1, 37, 300, torch.float16, bias_dtype=torch.float16)
    y, used = run(emu, fmt, act, x, t, scale, bias, path=1)
    assert used.startswith("ternary_mm_")
    check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("act,dtype,K,fits", [
    ("int8", torch.float32, 32768 - 64, True),   # int8 codes: 1 byte per column
    ("int8", torch.float32, 32768 - 63, False),
    ("none", torch.float16, 16384 - 32, True),   # staged in x's dtype
    ("none", torch.float16, 16384, False),
    ("none", torch.float32, 8192 - 16, True),
    ("none", torch.float32, 8192, False),
])
def test_long_k_decode_plan(emu, act, dtype, K, fits):
    """M = 1 stages the row in threadgroup memory while it fits, else takes the matmul."""
    gen = torch.Generator().manual_seed(K)
    x, t, scale, bias = make_case(gen, 1, 3, K, dtype, bias_dtype=dtype)
    y, used = run(emu, "i2", act, x, t, scale, bias)
    assert used.startswith("ternary_mv_" if fits else "ternary_mm_")
    check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("shift", [1, 4, 8, 15])
@pytest.mark.parametrize("fmt", FORMATS)
def test_unaligned_weight_base(emu, fmt, shift):
    """A weight view at an odd storage offset is read bytewise, not with 16-byte loads."""
    assert emu.tmetal_aligned(0, 64) == 1 and emu.tmetal_aligned(shift, 64) == 0
    assert emu.tmetal_aligned(0, 65) == 0
    gen = torch.Generator().manual_seed(shift)
    x, t, scale, bias = make_case(gen, 1, 21, 1024, torch.float32, bias_dtype=torch.float32)
    for act in ACTS:
        y, _ = run(emu, fmt, act, x, t, scale, bias, w_shift=shift)
        check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("path", [0, 1])
def test_scale_and_bias_dtypes(emu, path):
    gen = torch.Generator().manual_seed(11)
    M = 1 if path == 0 else 3
    for sd, bd, per_channel in itertools.product(ALL_DTYPES, [None] + ALL_DTYPES, [False, True]):
        x, t, scale, _ = make_case(gen, M, 9, 40, torch.float32, per_channel=per_channel)
        scale = scale.to(sd)
        bias = None if bd is None else torch.randn(9, generator=gen).to(bd)
        for fmt in FORMATS:
            y, _ = run(emu, fmt, "int8", x, t, scale, bias, path=path)
            check(y, x, t, scale, bias, "int8")


@pytest.mark.parametrize("path", [0, 1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_rounding_ties_and_zero_rows(emu, fmt, path):
    """x * inv lands exactly on .5 (round half to even); an all-zero row uses the 1e-5 clamp."""
    K = 40
    row = torch.tensor([127.0] + [k + 0.5 for k in range(-20, 19)], dtype=torch.float32)
    x = torch.stack([row, torch.zeros(K), -row]) if path == 1 else row[None]
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(-1, 2, (6, K), generator=gen, dtype=torch.int8)
    scale = torch.tensor(0.75)
    bias = torch.randn(6, generator=gen)
    q, _ = quantize_rows(x)
    assert bool((q[0, 1:] != torch.trunc(x[0, 1:] + 0.5 * torch.sign(x[0, 1:]))).any())  # ties seen
    y, _ = run(emu, fmt, "int8", x, t, scale, bias, path=path)
    check(y, x, t, scale, bias, "int8")


def test_seeds_and_thread_orders(emu):
    """Fresh data and a different fiber order every run: results never depend on schedule."""
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    for i in range(6):
        M = [1, 1, 4, 2, 1, 9][i]
        N, K = (int(v) for v in torch.randint(1, 300, (2,), generator=gen))
        fmt, act = FORMATS[i % 2], ACTS[(i // 2) % 2]
        dtype = ALL_DTYPES[i % 3]
        x, t, scale, bias = make_case(gen, M, N, K, dtype, bias_dtype=dtype)
        y, _ = run(emu, fmt, act, x, t, scale, bias, seed=seed + i)
        check(y, x, t, scale, bias, act)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: SUFFIX[d])
@pytest.mark.parametrize("act", ACTS)
def test_q8_weights_on_i8_kernels(emu, act, dtype, fresh_seed):
    """linear_q8 (int8 weights in [-127, 127]) runs the i8 kernels on MPS: exact for any int8."""
    gen = torch.Generator().manual_seed(fresh_seed)
    for i, (M, N, K) in enumerate([(1, 17, 63), (1, 65, 1041), (3, 33, 257), (5, 7, 1040)]):
        x, _, scale, bias = make_case(gen, M, N, K, dtype, per_channel=True,
                                      bias_dtype=[None, dtype][i % 2])
        t = torch.randint(-127, 128, (N, K), generator=gen, dtype=torch.int8)
        t[0], t[-1] = 127, -127
        y, used = run(emu, "i8", act, x, t, scale, bias, seed=i)
        assert used == f"ternary_{'mv' if M == 1 else 'mm'}_i8_{act}_{SUFFIX[dtype]}"
        check(y, x, t, scale, bias, act)


def test_agrees_with_package_reference(emu):
    """Same semantics as ternary_ops.reference, when the package provides it."""
    tops = pytest.importorskip("ternary_ops")
    ref = getattr(tops, "reference", None)
    if ref is None or not hasattr(tops, "pack_i2"):
        pytest.skip("ternary_ops.reference / pack_i2 not available in this build")
    gen = torch.Generator().manual_seed(5)
    for fmt, act, M in itertools.product(FORMATS, ACTS, [1, 3]):
        x, t, scale, bias = make_case(gen, M, 23, 70, torch.float32, bias_dtype=torch.float32)
        y, _ = run(emu, fmt, act, x, t, scale, bias)
        if fmt == "i2":
            assert torch.equal(tops.pack_i2(t), pack_i2(t))
            want = ref.linear_i2(x, pack_i2(t), scale, t.shape[0], bias, act)
        else:
            want = ref.linear_i8(x, t, scale, bias, act)
        torch.testing.assert_close(y, want.to(y.dtype), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("path", [0, 1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_nonfinite_rows_give_nan_rows(emu, fmt, path):
    """act="int8": a row holding NaN, +Inf or -Inf gives an all-NaN output row, as in
    ternary_ops.reference; the other rows stay bit-exact."""
    from ternary_ops import reference as package_reference
    from helpers import assert_bit_exact
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    M = 1 if path == 0 else 5
    for dtype, bad in itertools.product(ALL_DTYPES, [float("nan"), float("inf"), -float("inf")]):
        x, t, scale, bias = make_case(gen, M, 21, 600, dtype, bias_dtype=torch.float32)
        x[M - 1, 599] = bad
        x[0, 3] = bad
        y, _ = run(emu, fmt, "int8", x, t, scale, bias, path=path)
        want = package_reference.linear_i8(x, t, scale, bias, "int8")
        assert want[0].isnan().all()
        assert_bit_exact(y, want, f"{fmt} path {path} {dtype} x has {bad}")


@pytest.mark.parametrize("path", [0, 1])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_k_gives_bias(emu, fmt, act, path):
    gen = torch.Generator().manual_seed(2)
    M = 1 if path == 0 else 5
    x, t, scale, bias = make_case(gen, M, 9, 0, torch.float32, bias_dtype=torch.float32)
    y, _ = run(emu, fmt, act, x, t, scale, bias, path=path)
    assert torch.equal(y, bias.expand(M, 9))


# ---- the emulator itself: it must catch the bugs it exists to catch ----

@pytest.mark.parametrize("case,expect", [
    (0, ""),                          # simd_sum / simd_max / shuffles, barrier-correct exchange
    (1, "barrier divergence"),        # a barrier only some threads reach
    (2, "simdgroup divergence"),      # simd_sum in a branch taken by half the lanes
    (3, "wrong result"),              # missing barrier between threadgroup write and read
    (4, "threadgroup memory overrun"),
])
def test_emulator_catches_bugs(emu, case, expect):
    err = ctypes.create_string_buffer(512)
    rc = emu.tmetal_selftest(case, err, 512)
    msg = err.value.decode()
    if not expect:
        assert rc == 0, msg
    else:
        assert rc != 0 and expect in msg, msg


# ---- the embedded source: what the glue hands the Metal compiler, with no include path ----

def metal_macros():
    """-D flags for the geometry constants, as the glue passes them (TERNARY_METAL_MACROS)."""
    config = (METAL / "ternary_metal_config.h").read_text()
    macro_list = re.search(r"#define TERNARY_METAL_MACROS\(X\)(.*?)\n\n", config, re.S).group(1)
    names = re.findall(r"X\((TERNARY_\w+)\)", macro_list)
    values = dict(re.findall(r"^#define (TERNARY_\w+) (\d+)", config, re.M))
    assert names and set(names) <= set(values)
    return [f"-D{n}={values[n]}" for n in names]


def test_embedded_source_is_self_contained(tmp_path):
    """The string the glue compiles: every quoted include inlined, the format header once, and
    under __METAL_VERSION__ no include but Metal's own (checked with no system headers at all)."""
    text = metal_source.metal_source()
    assert not re.search(r'^\s*#\s*include\s*"', text, re.M)
    assert not re.search(r"^\s*#\s*pragma\s+once", text, re.M)
    # The format header's constants and functions, each defined exactly once.
    fmt = (CSRC / "ternary_format.h").read_text()
    names = re.findall(r"TERNARY_FORMAT_CONST\s+\w+\s+(\w+)\s*=", fmt)
    funcs = re.findall(r"TERNARY_FORMAT_FN\s+\w+\s+(\w+)\s*\(", fmt)
    assert {"kI2RowsPerByte", "kI2CodeMaskX4", "kI2ZeroByte", "kActQMax", "kActEps"} <= set(names)
    assert {"i2_packed_rows", "i2_shift", "i2_decode"} <= set(funcs)
    for name in names:
        assert len(re.findall(rf"TERNARY_FORMAT_CONST\s+\w+\s+{name}\s*=", text)) == 1, name
    for name in funcs:
        assert len(re.findall(rf"TERNARY_FORMAT_FN\s+\w+\s+{name}\s*\(", text)) == 1, name
    header = metal_source.header_text(text)  # what setup.py writes holds exactly this text
    assert header.count("kTernaryMetalSource") == 1 and text in header

    # Preprocessed as Metal would (__METAL_VERSION__ set) with -nostdinc and an empty
    # <metal_stdlib>: any other header (<cstdint>, a project header) fails to resolve.
    cxx = cxx_or_skip()
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "metal_stdlib").write_text("")
    src = tmp_path / "ternary.metal"
    src.write_text(text)
    r = subprocess.run([cxx, "-E", "-H", "-x", "c++", "-nostdinc", "-nostdinc++",
                        "-D__METAL_VERSION__=310", f"-I{tmp_path / 'inc'}"] + metal_macros() +
                       [str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    opened = {Path(l.lstrip(". ").strip()).name for l in r.stderr.splitlines() if l.startswith(".")}
    assert opened == {"metal_stdlib"}, r.stderr
    # ... and the format constants come out in Metal's constant address space.
    for name in names:
        assert re.search(rf"constant constexpr \w+ {name} =", r.stdout), name


def test_embedded_source_compiles_alone(tmp_path):
    """The embedded string alone, with the geometry as -D macros (as the glue passes them) and
    no include path but Metal's <metal_stdlib> (here the emulator's), compiles: the runtime
    compile cannot miss a header the emulator found through -I csrc."""
    cxx = cxx_or_skip()
    src = tmp_path / "ternary.metal"
    src.write_text(metal_source.metal_source())
    isolated = tmp_path / "stdlib"  # only <metal_stdlib> and what it pulls in, nothing of csrc
    isolated.mkdir()
    for name in ("metal_stdlib", "metal_emu.h"):
        shutil.copy(EMU / name, isolated / name)
    cmd = [cxx, "-fsyntax-only", "-x", "c++"] + EMU_FLAGS + [f"-I{isolated}"] + metal_macros() + [
        str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]


# ---- the Objective-C++ glue: type-checked against minimal SDK stand-ins (never run here) ----

def test_glue_typechecks(tmp_path):
    """clang parses and type-checks csrc/aten/ops_mps.mm (ARC, blocks, the torch/mps.h API,
    op_checks.h) against tests/metal_emu/sdk_stubs, both math-mode branches. Proves syntax and
    API use only: the stubs declare what Apple's SDK does, nothing is linked or run."""
    clang = shutil.which(os.environ.get("OBJCXX", "clang++"))
    if clang is None:
        pytest.skip("clang++ not installed (apt-get install clang) to type-check the MPS glue")
    from torch.utils import cpp_extension

    metal_source.write_header(tmp_path / "metal" / "metal_source.h")  # what setup.py generates
    base = [clang, "-fsyntax-only", "-x", "objective-c++", "-std=c++17", "-fobjc-arc", "-fblocks",
            "-fobjc-runtime=gnustep-2.0", "-DTERNARY_HAVE_MPS=1", "-Wall", "-Wextra", "-Werror",
            "-Wno-unused-parameter", "-Wno-c++20-extensions", f"-I{EMU / 'sdk_stubs'}",
            f"-I{tmp_path}", f"-I{ROOT / 'csrc'}"]
    base += [f"-I{p}" for p in cpp_extension.include_paths()]
    for extra in ([], ["-D__MAC_15_0=150000", "-D__MAC_OS_X_VERSION_MAX_ALLOWED=150000"]):
        r = subprocess.run(base + extra + [str(ROOT / "csrc" / "aten" / "ops_mps.mm")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-4000:]
