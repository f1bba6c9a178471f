"""The x86 SIMD kernel sets (csrc/cpu/x86): each one forced in turn and checked through the op
against the torch reference (bit-exact for act="int8"), the dispatcher's choice, the
TERNARY_OPS_KERNEL override, and the torch-free native harness plus a kernel-level int8 edge
test (activations -128/+127 fed straight to the kernels, past the K accumulation block).
"""
import os
import platform
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
pytestmark = pytest.mark.skipif(
    not IS_X86, reason="x86-64 only: the x86 SIMD kernel sets are built and run only there")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

X86_SETS = ("avx512_amx", "avx512_vnni", "avxvnni", "avx2")

if IS_X86:
    import ternary_ops as tops
    from helpers import (assert_bit_exact, forced_cpu_kernel, random_codes, random_scale,
                         run_op, run_ref, skip_unless_cpu_kernel, to_format)


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


AVX512_VNNI_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma", "avx2"}
AMX_FLAGS = AVX512_VNNI_FLAGS | {"amx_tile", "amx_int8"}


def expected_sets(flags: set) -> list:
    """The x86 sets this CPU should offer, best first (the dispatcher's order)."""
    out = []
    if AMX_FLAGS <= flags:
        out.append("avx512_amx")
    if AVX512_VNNI_FLAGS <= flags:
        out.append("avx512_vnni")
    if {"avx_vnni", "avx2", "fma"} <= flags:
        out.append("avxvnni")
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
    return out


@pytest.fixture(params=X86_SETS)
def kernel(request):
    with forced_cpu_kernel(request.param) as name:
        yield name


def make_problem(fmt, M, N, K, gen, weights=None, x=None):
    """Draws the codes (unless given), then x (unless given): rows of magnitudes up to 10."""
    codes = weights if weights is not None else random_codes(N, K, gen)
    w = to_format(codes, fmt)
    if x is None:
        x = torch.randn(M, K, generator=gen) * torch.rand(M, 1, generator=gen) * 10
    return codes, w, x


# (M, N, K): odd sizes hit every row, column and activation-row tail; M >= 4 takes the AMX
# path of avx512_amx; K = 64 * k +- 1 straddles the SIMD widths.
SHAPES = [(1, 1, 1), (1, 3, 5), (1, 5, 63), (1, 17, 64), (1, 63, 65), (1, 130, 257),
          (2, 64, 127), (3, 65, 129), (4, 31, 300), (5, 129, 1000), (8, 256, 512),
          (16, 33, 2049), (17, 67, 131), (33, 100, 64), (40, 48, 700), (1, 1000, 1000)]


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M%dN%dK%d" % s)
def test_int8_bit_exact_vs_reference(kernel, fmt, shape):
    M, N, K = shape
    gen = torch.Generator().manual_seed(M * 1000003 + N * 1009 + K)
    codes, w, x = make_problem(fmt, M, N, K, gen)
    for per_row, with_bias in ((False, False), (True, True)):
        # per tensor: a one-element vector [1], not a 0-d scale
        scale = random_scale(N, per_row, gen, offset=0.01).reshape(-1)
        bias = torch.randn(N, generator=gen) if with_bias else None
        got = run_op(fmt, x, w, scale, N, bias, "int8")
        want = run_ref(fmt, x, w, scale, N, bias, "int8")
        assert_bit_exact(got, want, f"{kernel} {fmt} {shape}")


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("shape", [(1, 67, 4099), (3, 20, 2560), (16, 64, 1024), (37, 9, 515)],
                         ids=lambda s: "M%dN%dK%d" % s)
def test_int8_integer_dot_exact(kernel, fmt, shape):
    """Integer x with row max |x| = 127 and scale 1: inv = 1, q = x, y = the integer dot."""
    M, N, K = shape
    gen = torch.Generator().manual_seed(K)
    x = torch.randint(-127, 128, (M, K), generator=gen).float()
    x[:, 0] = 127.0
    codes, w, _ = make_problem(fmt, M, N, K, gen, x=x)
    y = run_op(fmt, x, w, torch.ones(1), N, None, "int8")
    dot = (x.long() @ codes.long().T).float()
    assert torch.equal(y, dot)


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("pattern", ["random_signs", "all_plus", "all_minus", "alternating"])
@pytest.mark.parametrize("M", [1, 5, 16, 33])
def test_int8_saturation_worst_case(kernel, fmt, pattern, M):
    """Every activation quantizes to +-127 and every weight is +-1: the largest products and
    pair sums (the int16 saturation case of vpmaddubsw) and the largest dots (127 K)."""
    N, K = 37, 4099
    gen = torch.Generator().manual_seed(M)
    if pattern == "random_signs":
        x = torch.randint(0, 2, (M, K), generator=gen).float() * 2 - 1
        wts = (torch.randint(0, 2, (N, K), generator=gen) * 2 - 1).to(torch.int8)
    elif pattern == "all_plus":
        x, wts = torch.ones(M, K), torch.ones(N, K, dtype=torch.int8)
    elif pattern == "all_minus":
        x, wts = -torch.ones(M, K), torch.ones(N, K, dtype=torch.int8)
    else:
        x = torch.ones(M, K)
        x[:, 1::2] = -1
        wts = torch.ones(N, K, dtype=torch.int8)
        wts[:, 1::2] = -1  # every product is +127
    codes, w, _ = make_problem(fmt, M, N, K, gen, weights=wts, x=x)
    y = run_op(fmt, x, w, torch.ones(1), N, None, "int8")
    want = run_ref(fmt, x, w, torch.ones(1), N, None, "int8")
    assert_bit_exact(y, want, f"{kernel} {fmt} {pattern} M={M}")
    # inv = 127 and q = 127 * x: y = (127 * dot) / 127 exactly recovers the integer dot.
    dot = (x.long() @ codes.long().T).float()
    assert torch.equal(y, dot)


@pytest.mark.parametrize("fmt", ["i2", "i8"])
@pytest.mark.parametrize("shape", SHAPES[::2] + [(3, 40, 4096)], ids=lambda s: "M%dN%dK%d" % s)
def test_none_matches_reference(kernel, fmt, shape):
    M, N, K = shape
    gen = torch.Generator().manual_seed(7 * K + N)
    codes, w, x = make_problem(fmt, M, N, K, gen)
    scale = torch.rand(N, generator=gen) + 0.01
    bias = torch.randn(N, generator=gen)
    got = run_op(fmt, x, w, scale, N, bias, "none")
    exact = (x.double() @ codes.double().T) * scale.double() + bias.double()
    # float32 accumulation in any order: error <~ sqrt(K) ulps of sum |x| * s.
    tol = 8 * (K + 1) ** 0.5 * 6e-8 * (x.abs().double().sum(1, keepdim=True) * scale.double())
    assert ((got.double() - exact).abs() <= tol + 1e-6 * (1 + exact.abs())).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(kernel, dtype):
    gen = torch.Generator().manual_seed(3)
    codes, w, x = make_problem("i2", 5, 50, 333, gen)
    x = x.to(dtype)
    for act in ("int8", "none"):
        got = run_op("i2", x, w, torch.tensor([0.5]), 50, None, act)
        want = run_ref("i2", x, w, torch.tensor([0.5]), 50, None, act)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)


def test_every_supported_set_is_available():
    want = expected_sets(cpu_flags())
    got = [s for s in tops.cpu_kernels_available() if s in X86_SETS]
    assert got == want, f"CPU flags say {want}, the build offers {got}"
    assert tops.cpu_kernels_available()[-1] == "portable"


def test_dispatcher_picks_avx512_when_the_cpu_has_it():
    flags = cpu_flags()
    if not AVX512_VNNI_FLAGS <= flags:
        pytest.skip("this CPU has no AVX-512 VNNI")
    # A fresh process, no override: the default choice.
    env = {k: v for k, v in os.environ.items() if k != "TERNARY_OPS_KERNEL"}
    out = subprocess.run([sys.executable, "-c", "import ternary_ops; print(ternary_ops.cpu_kernel())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("avx512_amx" if AMX_FLAGS <= flags else "avx512_vnni")


# Child-process code: i2 act="int8" through the op (the process's kernel choice), bit-exact
# against the reference, for 70 x K weights and each M in Ms.
I2_CHECK = textwrap.dedent("""
    import torch, ternary_ops as tops
    from ternary_ops import reference
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-1, 2, (70, {K}), dtype=torch.int8, generator=g)
    w = tops.pack_i2(codes)
    for M in {Ms}:
        x = torch.randn(M, {K}, generator=g)
        y = torch.ops.ternary.linear_i2(x, w, torch.ones(1), 70, None, "int8")
        assert torch.equal(y, reference.linear_i2(x, w, torch.ones(1), 70, None, "int8"))
""")


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def test_decode_kernel_choice():
    # Under the automatic choice, M = 1 i2 act="int8" products run avxvnni on AMD CPUs with both
    # VNNI kinds (the rest stays on the selected set); a forced set serves every M.
    flags = cpu_flags()
    env = {k: v for k, v in os.environ.items() if k != "TERNARY_OPS_KERNEL"}
    code = I2_CHECK.format(K=2600, Ms=(1, 3)) + textwrap.dedent("""
        print(tops.cpu_kernel(), tops.cpu_decode_kernel())
        for name in tops.cpu_kernels_available():
            tops.select_cpu_kernel(name)
            assert tops.cpu_decode_kernel() == name, (name, tops.cpu_decode_kernel())
        tops.select_cpu_kernel("auto")
        print(tops.cpu_decode_kernel())
    """)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    selected, decode, after_auto = out
    amd_vnni = cpu_vendor() == "AuthenticAMD" and AVX512_VNNI_FLAGS <= flags and \
        "avx_vnni" in flags
    assert decode == ("avxvnni" if amd_vnni else selected)
    assert after_auto == decode
    forced = subprocess.run(
        [sys.executable, "-c", "import ternary_ops as t; print(t.cpu_decode_kernel())"],
        env={**env, "TERNARY_OPS_KERNEL": selected}, capture_output=True, text=True,
        check=True).stdout.strip()
    assert forced == selected


@pytest.mark.parametrize("name", X86_SETS)
def test_env_var_forces_set(name):
    skip_unless_cpu_kernel(name)
    code = I2_CHECK.format(K=300, Ms=(1, 20)) + "print(tops.cpu_kernel())\n"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TERNARY_OPS_KERNEL": name},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


# ---- torch-free checks --------------------------------------------------------------------

@pytest.fixture(scope="module")
def native_build(tmp_path_factory):
    """The CPU tier built once (tools/native_build.py), linked into the native harness
    (tests/native/harness.cpp) and the int8 edge test (tests/native/int8_edges.cpp: int8
    activations fed straight to every kernel set, the integer dots compared with int64 sums)."""
    import kernel_build as kb
    import native_build as nb

    out = tmp_path_factory.mktemp("x86native")
    sources, define = kb.simd_backend(platform.machine())
    assert sources and define, "no x86 kernel sources found"
    tier = nb.compile_tier(out / "tier.objs")
    return {name: nb.build_program(name, out / name, tier_objs=tier)
            for name in ("harness", "int8_edges")}


def test_native_harness_every_set(native_build):
    flags = cpu_flags()
    want = expected_sets(flags)
    listed = subprocess.run([str(native_build["harness"]), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()
    assert [s for s in listed if s in X86_SETS] == want
    args = [str(native_build["harness"]), "--seed", "12345"]
    if want:
        args += ["--expect", want[0]]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    # Each x86 set forced in turn through the environment (the harness reads it at first use).
    for name in want:
        r = subprocess.run([str(native_build["harness"]), "--seed", "7", "--expect", name],
                           env={**os.environ, "TERNARY_OPS_KERNEL": name},
                           capture_output=True, text=True)
        assert r.returncode == 0, name + "\n" + r.stdout[-4000:]


def test_native_int8_edges(native_build):
    r = subprocess.run([str(native_build["int8_edges"])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_bench_cli_smoke(tmp_path):
    """python -m ternary_ops.bench runs end to end (tiny shapes, both modes) and writes JSON."""
    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", "ternary_ops.bench", "--shapes", "256x128", "--m", "1,3",
            "--formats", "i2,i8", "--act", "int8,none", "--modes", "hot,cold", "--threads", "1",
            "--cold-gib", "0.01", "--bw-gib", "0.05", "--min-reps", "2", "--max-reps", "3",
            "--budget", "0", "--warmup", "1", "--targets", "--json", str(out)]
    try:
        import matplotlib  # noqa: F401
        args += ["--plot", str(tmp_path / "roofline.png")]
    except ImportError:
        pass
    r = subprocess.run(args, capture_output=True, text=True, cwd=str(ROOT))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json
    data = json.loads(out.read_text())
    assert data["info"]["threads"] == 1
    kinds = {(x["kind"], x["format"], x["act"], x["mode"], x["M"]) for x in data["results"]}
    assert ("ternary", "i2", "int8", "cold", 3) in kinds and ("dense", "bfloat16", "-", "hot", 1) in kinds
    for x in data["results"]:
        assert x["median_us"] > 0 and x["gops"] > 0 and x["dram_fraction"] is not None
        if x["kind"] == "ternary":
            assert x["vs_fp32"] is not None and x["vs_bf16"] is not None


def test_glue_parallel_for_is_openmp():
    """at::parallel_for is inline in ATen's headers and runs serially unless the glue is built
    with -fopenmp (setup.py adds it for GCC when ATen's backend is OpenMP): the op's module must
    call into the OpenMP runtime. Structural, not a timing."""
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's ATen parallel backend is not OpenMP")
    ver = subprocess.run(shlex.split(os.environ.get("CXX", "c++")) + ["--version"],
                         capture_output=True, text=True).stdout.lower()
    if "clang" in ver or os.environ.get("TERNARY_OPS_NO_OPENMP") == "1":
        pytest.skip("the glue is built without -fopenmp with this compiler / setting")
    so = Path(tops._C.__file__).read_bytes()
    assert b"GOMP_parallel" in so, "ternary_ops._C was built without -fopenmp: ops run on one thread"
