"""The MPS path on PyTorch's public Metal API (ternary_ops/mps_shader.py), run on the emulator.

No Apple GPU here, so ``torch.mps.compile_shader`` is played by tests/metal_emu/shader_standin.py:
it compiles the exact text mps_shader hands compile_shader (the kernels built with
TERNARY_STATIC_SMEM, the geometry as #define lines) as C++ against the Metal emulator, and a
kernel call binds its arguments as PyTorch's binding does (tensors as buffers at their storage
offsets, int lists cast to int32 bytes, threads / group_size as dispatchThreads' sizes). CPU
tensors play the MPS tensors: mps_shader's own code runs unchanged (its device is injected).
Everything from validation to the launch is mps_shader's; the kernels are the shipped ones.
act="int8" must equal ternary_ops.reference bit for bit; act="none" to float rounding.

What this does not prove: that compile_shader and the GPU behave as the stand-in says (its
binding rules were read from PyTorch's source, not run), the Metal compiler's acceptance of the
static-storage form, and anything about speed.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ternary_ops as tops
from ternary_ops import _C, mps_shader, reference

from helpers import assert_bit_exact, with_offset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "metal_emu"))
sys.path.insert(0, str(ROOT / "tools"))
import metal_source  # noqa: E402
import shader_standin  # noqa: E402

FORMATS = ["i2", "i8", "q8"]
ACTS = ["int8", "none"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# act="none": the output dtype's relative rounding (the bf16/f16 output rounds once)
REL = {torch.float32: 2.4e-7, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}
# (M, N, K): M = 1 the matvec, M > 1 the matmul (a tuple: x with several leading dims); odd N
# and K around every block (16-byte chunks, i2's 4 rows per byte, 32-wide tiles), K > 512 where
# the matvec's lanes loop; K % 16 == 0 where weights may be read 16 bytes at a time.
SHAPES = [(1, 1, 1), (1, 3, 17), (1, 17, 65), (1, 33, 257), (1, 5, 48), (1, 65, 1041),
          (1, 7, 1040), (3, 17, 33), (2, 65, 3), (5, 3, 64), ((2, 3), 5, 17), (33, 9, 20),
          (4, 257, 65)]


def poisoned_empty(*size, dtype, device):
    """The output allocator for the tests: every byte 0xFF (NaN for floats), so an output the
    kernels do not write cannot pass."""
    t = torch.empty(*size, dtype=dtype, device=device)
    if t.numel():
        t.view(torch.uint8).fill_(0xFF)
    return t


@pytest.fixture(scope="module")
def shader():
    """mps_shader's ops on the stand-in, for CPU tensors."""
    try:
        shader_standin._cxx()
    except RuntimeError as e:
        pytest.skip(str(e))
    return mps_shader.ShaderOps(shader_standin.compile_shader, device_type="cpu",
                                empty=poisoned_empty)


# ---- making inputs: views, offsets, dtypes ------------------------------------------------

def strided_x(x, how):
    """x (shape [..., K]) laid out as: 0 contiguous, 1 at a storage offset (read in place),
    2 last dim not unit-stride, 3 rows padded (unit stride, not contiguous)."""
    if how == 0:
        return x.clone()
    if how == 1:
        return with_offset(x, 5)
    if how == 2:
        wide = torch.empty((*x.shape[:-1], 2 * x.shape[-1]), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    wide = torch.empty((*x.shape[:-1], x.shape[-1] + 3), dtype=x.dtype)
    wide[..., 1:x.shape[-1] + 1] = x
    return wide[..., 1:x.shape[-1] + 1]


def make_weight(fmt, n, k):
    if fmt == "q8":
        codes = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        codes.view(-1)[0] = 127
        codes.view(-1)[-1] = -127
        return codes
    codes = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    return tops.pack_i2(codes) if fmt == "i2" else codes


def call(shader, fmt, x, w, scale, n, bias, act):
    if fmt == "i2":
        return shader.linear_i2(x, w, scale, n, bias, act)
    return getattr(shader, f"linear_{fmt}")(x, w, scale, bias, act)


def ref(fmt, x, w, scale, n, bias, act):
    if fmt == "i2":
        return reference.linear_i2(x, w, scale, n, bias, act)
    return getattr(reference, f"linear_{fmt}")(x, w, scale, bias, act)


def check(got, want, act, what, x, codes, scale):
    """act="int8": bit for bit. act="none": within the output dtype's rounding of the
    reference plus float32 summation error, against the scale of the summed terms."""
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if act == "int8":
        assert_bit_exact(got, want, what)
        return
    bound = (x.double().abs() @ codes.double().abs().T) * scale.double().abs().reshape(-1)
    tiny = torch.finfo(got.dtype).tiny * torch.finfo(got.dtype).eps  # a subnormal's step
    tol = REL[got.dtype] * want.double().abs() + 4e-6 * bound + tiny
    diff = (got.double() - want.double()).abs()
    assert bool((diff <= tol).all()), f"{what}: max |diff| {diff.max().item():.3g}"


def codes_of(fmt, w, n):
    return tops.unpack_i2(w, n) if fmt == "i2" else w


def params_of(record):
    """The 9 x uint32 parameter block a call bound at [[buffer(5)]]."""
    raw = record["bytes"][mps_shader.PARAMS_INDEX]
    assert len(raw) == 36, "the parameter block is 9 x uint32"
    return torch.frombuffer(bytearray(raw), dtype=torch.int32).tolist()


# ---- every op against the reference ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_op_vs_reference(shader, fmt, act, dtype):
    """Each shape with a different mix: scale per tensor or per row (float32, float16,
    bfloat16, float64), bias absent or of any float dtype (itself at a storage offset), x
    contiguous / at an offset / strided / with padded rows, weights at byte offsets 0, 16, 1."""
    lib = shader.library
    for i, (M, N, K) in enumerate(SHAPES):
        lead = M if isinstance(M, tuple) else (M,)
        m = 1
        for d in lead:
            m *= d
        w0 = make_weight(fmt, N, K)
        w_off = [0, 16, 1][i % 3]
        w = with_offset(w0, w_off) if w_off else w0
        scale_dtype = [torch.float32, torch.float16, torch.bfloat16, torch.float64][i % 4]
        per_row = i % 2 == 0
        scale = (torch.rand(N if per_row else ()) + 0.5).to(scale_dtype)
        bias_dtype = [None, dtype, torch.float32, torch.bfloat16][(i + 1) % 4]
        bias = None if bias_dtype is None else with_offset(torch.randn(N).to(bias_dtype), 3)
        x0 = (torch.randn(*lead, K) * (torch.rand(*lead, 1) * 4)).to(dtype)
        x = strided_x(x0, i % 4)
        before = (x.clone(), w.clone())
        what = f"{fmt} {act} {dtype} M={M} N={N} K={K} case {i}"

        n_calls = len(lib.calls)
        y = call(shader, fmt, x, w, scale, N, bias, act)
        check(y, ref(fmt, x0, w0, scale, N, bias, act), act, what, x0, codes_of(fmt, w0, N),
              scale)
        assert torch.equal(x, before[0]) and torch.equal(w, before[1]), f"{what}: inputs changed"

        # One kernel call, launched as the plan says, with the parameter block of the glue.
        assert len(lib.calls) == n_calls + 1, what
        rec = lib.calls[-1]
        path = "mv" if m == 1 else "mm"
        kfmt = "i8" if fmt == "q8" else fmt
        sfx = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
        assert rec["name"] == f"ternary_{path}_{kfmt}_{act}_{sfx}", what
        plan = _C.metal_plan(fmt == "i2", act == "int8", DT[dtype], m, N, K, x.element_size(),
                             shader.max_smem)
        assert rec["threads"] == [plan[1] * plan[3], plan[2]], what
        assert rec["group_size"] == [plan[3], 1], what
        kernel_scale = scale if scale_dtype != torch.float64 else scale.float()
        want = [m, N, K, (N + 3) // 4 if fmt == "i2" else N, int(per_row and N > 1),
                DT[kernel_scale.dtype], int(bias is not None),
                DT[(bias if bias is not None else kernel_scale).dtype],
                int(w_off % 16 == 0 and K % 16 == 0)]
        assert params_of(rec) == want, what


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_shapes(shader, fmt, fresh_seed):
    """A few random shapes, acts and dtypes per run."""
    gen = torch.Generator().manual_seed(fresh_seed)
    for _ in range(3):
        M = [1, 2, 7][int(torch.randint(0, 3, (), generator=gen))]
        N, K = (int(v) for v in torch.randint(1, 200, (2,), generator=gen))
        act = ACTS[int(torch.randint(0, 2, (), generator=gen))]
        dtype = DTYPES[int(torch.randint(0, 3, (), generator=gen))]
        w = make_weight(fmt, N, K)
        scale = torch.rand(N) + 0.5
        bias = torch.randn(N).to(dtype)
        x = torch.randn(M, K).to(dtype)
        y = call(shader, fmt, x, w, scale, N, bias, act)
        check(y, ref(fmt, x, w, scale, N, bias, act), act, f"{fmt} {act} {dtype} {M}x{N}x{K}",
              x, codes_of(fmt, w, N), scale)


@pytest.mark.parametrize("M", [1, 4])
@pytest.mark.parametrize("fmt", ["i2", "i8"])
def test_nonfinite_rows_give_nan_rows(shader, fmt, M):
    """act="int8": a row of x holding NaN or +-Inf gives an all-NaN output row; the others stay
    bit-exact (docs/DESIGN.md)."""
    for bad in (float("nan"), float("inf"), -float("inf")):
        w = make_weight(fmt, 13, 70)
        scale = torch.rand(13) + 0.5
        x = torch.randn(M, 70)
        x[0, 5] = bad
        y = call(shader, fmt, x, w, scale, 13, None, "int8")
        want = ref(fmt, x, w, scale, 13, None, "int8")
        assert y[0].isnan().all()
        assert_bit_exact(y, want, f"{fmt} M={M} x holds {bad}")


@pytest.mark.parametrize("act,dtype,k_max", [
    ("int8", torch.float32, 16320),   # int8 codes: 64 + K bytes
    ("none", torch.float16, 8160),    # staged in x's dtype
    ("none", torch.float32, 4080),
])
def test_decode_beyond_static_storage_takes_matmul(shader, act, dtype, k_max):
    """M = 1 uses the matvec while its staged row fits the storage it declares
    (TERNARY_MV_STATIC_SMEM bytes), then the matmul: the emulator would report an overrun of
    the declared block, so this also proves kernel and plan agree on its size."""
    assert shader.max_smem == _C.metal_macros()["TERNARY_MV_STATIC_SMEM"] == 16384
    for K, path in ((k_max, "mv"), (k_max + 1, "mm")):
        w = make_weight("i2", 3, K)
        scale = torch.rand(3) + 0.5
        x = torch.randn(1, K).to(dtype)
        y = call(shader, "i2", x, w, scale, 3, None, act)
        assert shader.library.calls[-1]["name"].startswith(f"ternary_{path}_"), (K, path)
        check(y, ref("i2", x, w, scale, 3, None, act), act, f"{act} {dtype} K={K}", x,
              codes_of("i2", w, 3), scale)


def test_empty_cases_run_no_kernel(shader):
    lib = shader.library
    n_calls = len(lib.calls)
    w = make_weight("i8", 6, 0)
    bias = torch.randn(6)
    y = shader.linear_i8(torch.randn(3, 0), w, torch.tensor(0.5), bias, "int8")
    assert torch.equal(y, bias.expand(3, 6))  # K = 0: the bias
    y = shader.linear_i8(torch.randn(2, 0, dtype=torch.float16), w, torch.tensor(0.5), None,
                         "none")
    assert y.dtype == torch.float16 and torch.equal(y, torch.zeros(2, 6, dtype=torch.float16))
    y = shader.linear_i2(torch.randn(0, 9), make_weight("i2", 5, 9), torch.tensor(1.0), 5, None,
                         "int8")
    assert y.shape == (0, 5)
    assert len(lib.calls) == n_calls


# ---- errors: the same as every other backend's ----------------------------------------------

BAD_CALLS = [
    ("act", lambda x, w, s, b: (x, w, s, b, "int4")),
    ("x dtype", lambda x, w, s, b: (x.double(), w, s, b, "int8")),
    ("weight dtype", lambda x, w, s, b: (x, w.to(torch.int16), s, b, "int8")),
    ("in_features", lambda x, w, s, b: (x[:, :-1], w, s, b, "int8")),
    ("scale shape", lambda x, w, s, b: (x, w, torch.ones(3), b, "int8")),
    ("scale dtype", lambda x, w, s, b: (x, w, torch.ones(7, dtype=torch.int32), b, "int8")),
    ("bias shape", lambda x, w, s, b: (x, w, s, torch.ones(6), "int8")),
]


@pytest.mark.parametrize("what,bad", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_arguments_raise_like_the_native_ops(shader, what, bad):
    """A clear ValueError naming the argument, the CPU glue's message (op_checks.h) up to what
    it got (dtypes print as torch spells them: torch.float64 for Double)."""
    x, w, s, b = torch.randn(2, 10), make_weight("i8", 7, 10), torch.rand(7), torch.randn(7)
    args = bad(x, w, s, b)
    with pytest.raises(ValueError) as native:
        torch.ops.ternary.linear_i8(*args)
    with pytest.raises(ValueError) as ours:
        shader.linear_i8(*args)
    mine, theirs = str(ours.value), str(native.value).split("\n")[0]
    assert mine.rsplit(" got ", 1)[0] == theirs.rsplit(" got ", 1)[0], (mine, theirs)
    if "dtype" not in what:
        assert mine == theirs


def test_device_check_is_not_weakened():
    """The production device check: an MPS kernel given CPU tensors raises."""
    prod = mps_shader.ShaderOps(lambda src: pytest.fail("must not compile"))
    assert prod.device_type == "mps"
    with pytest.raises(RuntimeError, match=r"ternary.linear_i8: the MPS kernel got x on cpu"):
        prod.linear_i8(torch.randn(1, 4), make_weight("i8", 2, 4), torch.rand(2), None, "int8")


def test_library_compiled_once(shader):
    """One compile per process (per ShaderOps), kernels looked up once each; a compile failure
    is remembered and re-raised without compiling again."""
    for M in (1, 2, 1, 3):
        call(shader, "i2", torch.randn(M, 8), make_weight("i2", 5, 8), torch.rand(5), 5, None,
             "int8")
    assert shader.compiles == 1
    assert shader.kernel("ternary_mv_i2_int8_f32") is shader.kernel("ternary_mv_i2_int8_f32")

    attempts = []

    def broken(src):
        attempts.append(src)
        raise SyntaxError("no")

    bad = mps_shader.ShaderOps(broken, device_type="cpu")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="compiling the Metal kernels failed: no"):
            bad.linear_i8(torch.randn(1, 4), make_weight("i8", 2, 4), torch.rand(2), None, "int8")
    assert len(attempts) == 1
    with pytest.raises(RuntimeError, match="bfloat16 kernels need Metal 3.1"):
        shader.kernel("ternary_mv_i8_int8_bf16_missing")


# ---- what compile_shader gets -----------------------------------------------------------------

def config_macros():
    """The TERNARY_METAL_MACROS names and values, read from the header itself."""
    config = (ROOT / "csrc" / "metal" / "ternary_metal_config.h").read_text()
    body = re.search(r"#define TERNARY_METAL_MACROS\(X\)(.*?)\n\n", config, re.S).group(1)
    values = dict(re.findall(r"^#define (TERNARY_\w+) (\d+)", config, re.M))
    return {n: int(values[n]) for n in re.findall(r"X\((TERNARY_\w+)\)", body)}


def test_library_source():
    """The #define lines are the header's constants (the _C build is current with it), then
    the static-storage switch, then exactly the embedded source the native glue compiles. ASCII
    (PyTorch passes it to Metal as an ASCII string), no quoted include, nothing PyTorch's
    header embedding would change (tests/test_metal_emulated.py checks that under Metal only
    <metal_stdlib> is opened)."""
    assert _C.metal_macros() == config_macros()
    text = mps_shader.library_source()
    text.encode("ascii")
    want = [f"#define {k} {v}" for k, v in config_macros().items()]
    lines = text.split("\n")
    defines = [line for line in lines[:len(want) + 4] if line.startswith("#define")]
    assert defines == want + ["#define TERNARY_STATIC_SMEM 1"]
    assert mps_shader.metal_source() == metal_source.metal_source()
    assert text.endswith(metal_source.metal_source())
    assert not re.search(r'^\s*#\s*include\s*"', text, re.M)
    # compile_shader first inlines includes it finds under torch/include: none of ours (it
    # splits the text into lines and joins them back, adding a final newline).
    assert shader_standin._embed_headers(text) == text + "\n"


def test_kernel_binding_matches_the_metal_signature():
    """Argument i binds [[buffer(i)]] (compile_shader and the stand-in alike): the kernels must
    declare buffer(0..5) in parameter order, the parameter block last, and in static mode no
    threadgroup(0) argument."""
    src = (ROOT / "csrc" / "metal" / "ternary_linear.metal").read_text()
    sigs = re.findall(r"kernel void (ternary_m[vm])\((.*?)\)\s*\{", src, re.S)
    assert [s[0] for s in sigs] == ["ternary_mv", "ternary_mm"]
    for name, params in sigs:
        indices = [int(i) for i in re.findall(r"\[\[buffer\((\d+)\)\]\]", params)]
        assert indices == list(range(6)), name
        assert re.search(r"constant LinearParams& p \[\[buffer\(5\)\]\]", params), name
        assert "TERNARY_SMEM_PARAM" in params and "threadgroup(0)" not in params, name
    assert re.search(r"#ifdef TERNARY_STATIC_SMEM\s+#define TERNARY_SMEM_PARAM\s*\n", src)


def test_static_storage_as_metal_sees_it(tmp_path):
    """library_source() preprocessed as Metal would (__METAL_VERSION__, no system headers, an
    empty <metal_stdlib>): no kernel takes a threadgroup argument, each declares a float4 array
    of its size (the matvec TERNARY_MV_STATIC_SMEM, the matmul TERNARY_MM_SMEM_BYTES), and
    the geometry macros come from the #define lines alone."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler to preprocess with")
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "metal_stdlib").write_text("")
    src = tmp_path / "library.metal"
    src.write_text(mps_shader.library_source())
    r = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-nostdinc", "-nostdinc++",
                        "-D__METAL_VERSION__=310", f"-I{tmp_path / 'inc'}", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-4000:]
    text = " ".join(r.stdout.split())
    assert "threadgroup(0)" not in text
    sizes = {}
    for name, params, decl in re.findall(
            r"kernel void (ternary_m[vm])\((.*?)\) \{ threadgroup float4 ternary_smem_storage"
            r"\[(.*?)\];", text):
        assert not re.search(r"threadgroup [a-z]", params), name  # no threadgroup pointer
        sizes[name] = eval(decl.replace("/", "//"))  # C integer arithmetic on literals
    macros = _C.metal_macros()
    assert sizes == {"ternary_mv": macros["TERNARY_MV_STATIC_SMEM"] // 16,
                     "ternary_mm": macros["TERNARY_MM_SMEM_BYTES"] // 16}
    assert "threadgroup uchar* smem = (threadgroup uchar*)ternary_smem_storage;" in text


# ---- the stand-in rejects what the API (or these kernels) would ------------------------------

def test_standin_rejects_bad_launches(shader):
    kernel = shader.kernel("ternary_mv_i8_int8_f32")
    x, w, s, y = torch.randn(1, 16), make_weight("i8", 4, 16), torch.rand(4), torch.empty(1, 4)
    params = [1, 4, 16, 4, 1, 0, 0, 0, 1]
    good = dict(threads=[128, 1], group_size=[128, 1], arg_casts={5: "int32"})
    kernel(x, w, s, s, y, params, **good)
    torch.testing.assert_close(y, reference.linear_i8(x, w, s, None, "int8"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="not a multiple of group_size"):
        kernel(x, w, s, s, y, params, **dict(good, threads=[100, 1]))
    with pytest.raises(ValueError, match="Threadgroup size exceeds 1024"):
        kernel(x, w, s, s, y, params, **dict(good, threads=[2048, 1], group_size=[2048, 1]))
    with pytest.raises(RuntimeError, match="takes 36 bytes; got 72"):  # int64 without the cast
        kernel(x, w, s, s, y, params, **dict(good, arg_casts=None))
    with pytest.raises(RuntimeError, match="got 5 arguments"):
        kernel(x, w, s, s, y, **good)
    with pytest.raises(RuntimeError, match="not aligned to its element type"):
        odd = torch.zeros(80, dtype=torch.uint8)[1:65]  # float32 x at byte offset 1
        kernel(odd, w, s, s, y, params, **good)
    with pytest.raises(RuntimeError, match="Failed to create function state object"):
        shader.library.ternary_nonexistent


def test_dynamic_threadgroup_memory_is_rejected():
    """The kernels built the native glue's way (a threadgroup(0) argument) cannot run through
    compile_shader, which sets no threadgroup memory length: the stand-in gives them 0 bytes
    and reports their first use. Hence TERNARY_STATIC_SMEM."""
    source = mps_shader.library_source().replace("#define TERNARY_STATIC_SMEM 1\n", "")
    assert "TERNARY_STATIC_SMEM" not in source.split("#line")[0]
    lib = shader_standin.compile_shader(source)
    x, w, s, y = torch.randn(1, 16), make_weight("i8", 4, 16), torch.rand(4), torch.empty(1, 4)
    with pytest.raises(RuntimeError, match=r"threadgroup memory overrun.*threadgroup\(0\)"):
        lib.ternary_mv_i8_int8_f32(x, w, s, s, y, [1, 4, 16, 4, 1, 0, 0, 0, 1],
                                   threads=[128, 1], group_size=[128, 1],
                                   arg_casts={5: "int32"})


def test_emulator_enforces_declared_storage():
    """The emulator holds a kernel to the storage it declares: a matvec whose declared block is
    smaller than its staged row overruns it, and a block past 32 KiB (which no Apple GPU
    compiles) is refused. One mutated library: the matvec's block shrunk to 256 bytes, the
    matmul's grown to 64 KiB."""
    source = mps_shader.library_source()
    for name, value in (("TERNARY_MV_STATIC_SMEM", 256), ("TERNARY_MM_SMEM_BYTES", 65536)):
        old = f"#define {name} {_C.metal_macros()[name]}\n"
        assert old in source
        source = source.replace(old, f"#define {name} {value}\n")
    lib = shader_standin.compile_shader(source)
    w, s = make_weight("i8", 4, 300), torch.rand(4)
    for M, kernel, match in ((1, lib.ternary_mv_i8_int8_f32, "overrun past the 256 bytes"),
                             (2, lib.ternary_mm_i8_int8_f32, "65536 declared .* exceeds 32768")):
        x, y = torch.randn(M, 300), torch.empty(M, 4)
        with pytest.raises(RuntimeError, match=match):
            kernel(x, w, s, s, y, [M, 4, 300, 4, 1, 0, 0, 0, 0], threads=[128, 1],
                   group_size=[128, 1], arg_casts={5: "int32"})


# ---- availability and registration ----------------------------------------------------------

def test_fast_math_makes_the_path_unavailable(monkeypatch):
    """PyTorch compiles compile_shader libraries with fast math when PYTORCH_MPS_FAST_MATH is
    set; act="int8" is exact only without it, so the path then stays off."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    if not hasattr(torch.mps, "compile_shader"):
        monkeypatch.setattr(torch.mps, "compile_shader", lambda src: None, raising=False)
    monkeypatch.setenv("PYTORCH_MPS_FAST_MATH", "1")
    assert "PYTORCH_MPS_FAST_MATH" in mps_shader.unavailable_reason()
    with pytest.raises(RuntimeError, match="PYTORCH_MPS_FAST_MATH"):
        mps_shader._compile_with_torch("")
    monkeypatch.setenv("PYTORCH_MPS_FAST_MATH", "0")
    assert mps_shader.unavailable_reason() is None and mps_shader.available()


def test_register():
    """register() does nothing without MPS; the registration itself puts the three ops' kernels
    on the MPS dispatch key (checked on a private library, then removed)."""
    key = "MPS"
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    if has("ternary::linear_i8", key):
        pytest.skip("this build already serves MPS (native glue or an earlier registration)")
    if not mps_shader.available():
        assert mps_shader.register() is False
        assert not has("ternary::linear_i8", key)
    lib = torch.library.Library("ternary", "IMPL")
    try:
        mps_shader._register(mps_shader.ShaderOps(lambda src: None), lib)
        assert all(has(f"ternary::{op}", key) for op in ("linear_i8", "linear_i2", "linear_q8"))
    finally:
        lib._destroy()
    assert not has("ternary::linear_i8", key)

