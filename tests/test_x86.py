"""The x86 SIMD kernel sets (csrc/x86): each one forced in turn and checked through the op
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


@pytest.mark.parametrize("name", X86_SETS)
def test_env_var_forces_set(name):
    skip_unless_cpu_kernel(name)
    code = textwrap.dedent("""
        import torch, ternary_ops as tops
        from ternary_ops import reference
        g = torch.Generator().manual_seed(0)
        codes = torch.randint(-1, 2, (70, 300), dtype=torch.int8, generator=g)
        w = tops.pack_i2(codes)
        for M in (1, 20):
            x = torch.randn(M, 300, generator=g)
            y = torch.ops.ternary.linear_i2(x, w, torch.ones(1), 70, None, "int8")
            assert torch.equal(y, reference.linear_i2(x, w, torch.ones(1), 70, None, "int8"))
        print(tops.cpu_kernel())
    """)
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TERNARY_OPS_KERNEL": name},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


# ---- torch-free checks --------------------------------------------------------------------

# Feeds int8 activations straight to every kernel set (the op's quantizer never makes -128)
# and compares the integer dots with int64 sums, exactly; K up to past the 65536-column block
# in which the kernels accumulate scaled i2 code planes.
EDGE_TEST = r"""
#include <cstdio>
#include <random>
#include <vector>
#include "cpu/kernels.h"
using namespace ternary;
using namespace ternary::cpu;
int main() {
  int fails = 0, checks = 0;
  std::mt19937 rng(1234);
  struct Case { int64_t M, N, K; };
  const Case cases[] = {{1, 67, 4099}, {5, 33, 8191}, {17, 64, 1000}, {33, 20, 4483},
                        {4, 9, 65536 + 77}, {1, 5, 131072 + 64}};
  for (int s = 0; s < available_kernel_count(); ++s) {
    const KernelSet& ks = available_kernel(s);
    for (const Case& c : cases)
      for (int pattern = 0; pattern < 5; ++pattern) {
        const int64_t ldq = act_padded_k(c.K), R = i2_packed_rows(c.N);
        std::vector<int8_t> w8(c.N * c.K), q(c.M * ldq, 0);
        std::uniform_int_distribution<int> bit(0, 1), tri(-1, 1), any(-128, 127);
        for (auto& v : w8)
          v = pattern == 0 ? -1 : pattern == 1 || pattern == 2 ? 1
              : pattern == 3 ? (bit(rng) ? 1 : -1) : tri(rng);
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t k = 0; k < c.K; ++k)
            q[m * ldq + k] = pattern <= 1 ? -128 : pattern == 2 ? 127
                             : pattern == 3 ? (bit(rng) ? 127 : -128) : any(rng);
        std::vector<uint8_t> w2(R * c.K, kI2ZeroByte);
        for (int64_t n = 0; n < c.N; ++n)
          for (int64_t k = 0; k < c.K; ++k) {
            uint8_t& b = w2[i2_byte_row(n, R) * c.K + k];
            const int sh = i2_shift(n, R);
            b = uint8_t((b & ~(kI2CodeMask << sh)) | ((w8[n * c.K + k] + 1) << sh));
          }
        std::vector<int32_t> sum(c.M, 0);
        for (int64_t m = 0; m < c.M; ++m)
          for (int64_t k = 0; k < c.K; ++k) sum[m] += q[m * ldq + k];
        std::vector<float> inv(c.M, 1.0f), scale(1, 1.0f);
        for (int fmt = 0; fmt < 2; ++fmt) {
          std::vector<float> y(c.M * c.N, -1.0f);
          Problem p;
          p.M = c.M; p.N = c.N; p.K = c.K;
          p.weight = fmt ? static_cast<const void*>(w2.data()) : static_cast<const void*>(w8.data());
          p.scale = scale.data(); p.scale_stride = 0;
          p.xq = q.data(); p.x_inv = inv.data(); p.x_sum = sum.data(); p.ldq = ldq;
          p.y = y.data(); p.ldy = c.N;
          const int64_t units = fmt ? R : c.N;
          for (int64_t u = 0, step = 1; u < units; step = step * 2 + 1) {
            const int64_t e = u + step < units ? u + step : units;
            (fmt ? ks.i2_int8 : ks.i8_int8)(p, u, e);
            u = e;
          }
          int bad = 0;
          for (int64_t m = 0; m < c.M; ++m)
            for (int64_t n = 0; n < c.N; ++n) {
              long long dot = 0;
              for (int64_t k = 0; k < c.K; ++k) dot += (long long)w8[n * c.K + k] * q[m * ldq + k];
              if (y[m * c.N + n] != float(dot)) ++bad;  // |dot| <= 128 K < 2^24: exact
            }
          ++checks;
          if (bad) {
            ++fails;
            std::printf("FAIL %s %s M=%lld N=%lld K=%lld pattern=%d: %d wrong\n", ks.name,
                        fmt ? "i2" : "i8", (long long)c.M, (long long)c.N, (long long)c.K,
                        pattern, bad);
          }
        }
      }
  }
  std::printf("%d passed, %d failed\n", checks - fails, fails);
  return fails ? 1 : 0;
}
"""


@pytest.fixture(scope="module")
def native_build(tmp_path_factory):
    """Kernel objects built once with the shared flag table, linked into the native harness
    and the edge test."""
    import kernel_build as kb

    out = tmp_path_factory.mktemp("x86native")
    sources, define = kb.simd_backend(platform.machine())
    assert sources and define, "no x86 kernel sources found"
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    objs = []
    for src in kb.CORE_SOURCES + sources:
        obj = out / (src.parent.name + "_" + src.stem + ".o")
        subprocess.run(cxx + kb.KERNEL_CFLAGS + kb.isa_flags(src) + [f"-D{define}=1", "-I",
                       str(kb.CSRC), "-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    (out / "edge.cpp").write_text(EDGE_TEST)
    exes = {}
    for name, src in (("harness", ROOT / "tests" / "native" / "harness.cpp"),
                      ("edge", out / "edge.cpp")):
        obj = out / (name + ".o")
        subprocess.run(cxx + kb.KERNEL_CFLAGS + [f"-D{define}=1", "-I", str(kb.CSRC), "-c",
                       str(src), "-o", str(obj)], check=True)
        subprocess.run(cxx + objs + [str(obj), "-o", str(out / name)], check=True)
        exes[name] = out / name
    return exes


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
    r = subprocess.run([str(native_build["edge"])], capture_output=True, text=True)
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
