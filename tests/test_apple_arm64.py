"""The CPU tier for Apple silicon (arm64 macOS), checked on Linux as far as Linux allows.

1. clang type-checks the torch-free CPU sources of an arm64 build (csrc/cpu/neon/*.cpp, and
   tools/kernel_build.py's CORE_SOURCES: dispatch.cpp, portable.cpp, rms_norm.cpp) for
   --target=arm64-apple-macos13, each file with the flags setup.py gives it (KERNEL_CFLAGS, the
   file's -march from ISA_FLAGS, TERNARY_HAVE_NEON for the core sources), -Werror. The target
   defines __APPLE__ (so detect.cpp's sysctlbyname branch is the one compiled), not __linux__.
   Headers: clang's own <arm_neon.h> and the NEON intrinsics under each -march; libc++ (the C++
   library macOS ships; LLVM's, installed from Debian's libc++-dev); the macOS SDK's C headers
   are not available on Linux, so glibc's aarch64 headers (libc6-dev-arm64-cross) stand in for
   them (with -D_GNU_SOURCE, and clang's Darwin nullability macros __nonnull / __nullable
   undefined, which glibc uses otherwise), and tests/apple_sdk/sys/sysctl.h for <sys/sysctl.h>.
2. detect.cpp's Apple branch runs on the host, unchanged (compiled with __APPLE__ defined,
   __linux__ undefined), with a stub sysctlbyname (tests/native/apple_probe.cpp) and through the
   real dispatcher (dispatch.cpp): every combination of answers for hw.optional.arm.FEAT_DotProd
   and FEAT_I8MM (1, 0, error) must give the right kernel sets.

Not checked here: the macOS SDK itself (its libc and libc++ configuration, availability
annotations), Apple clang's own version and defaults, code generation, linking and running on
macOS (the NEON kernels run under qemu for aarch64 Linux: tools/arm64/ci.sh; Apple's arm64 ABI,
e.g. its signed char, is never executed); and the torch glue (csrc/ops.cpp, csrc/aten/*.cpp),
whose torch and libc++ <locale> headers need Darwin's C library (xlocale) that no stand-in
here provides. A Mac runs all of it: tools/mac_check.py.
"""
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
APPLE_SDK = ROOT / "tests" / "apple_sdk"
AARCH64_LIBC = Path("/usr/aarch64-linux-gnu/include")  # libc6-dev-arm64-cross
TARGET = "arm64-apple-macos13"
sys.path.insert(0, str(ROOT / "tools"))
import kernel_build as kb  # noqa: E402

NEON_SOURCES, NEON_DEFINE = kb.simd_backend("arm64")
SOURCES = NEON_SOURCES + kb.CORE_SOURCES


def clang_or_skip():
    clang = shutil.which(os.environ.get("OBJCXX", "clang++"))
    if clang is None:
        pytest.skip("clang++ not installed (apt-get install clang)")
    return clang


def libcxx_headers(clang) -> Path:
    """libc++'s include directory, as clang itself finds it."""
    r = subprocess.run([clang, "-stdlib=libc++", "-E", "-x", "c++", "-", "-v"], input="",
                       capture_output=True, text=True)
    for line in r.stderr.splitlines():
        p = Path(line.strip())
        if p.name == "v1" and p.parent.name == "c++" and (p / "vector").is_file():
            return p.resolve()
    pytest.skip("libc++ headers not installed (apt-get install libc++-dev)")


@pytest.fixture(scope="module")
def apple_cmd():
    clang = clang_or_skip()
    if not (AARCH64_LIBC / "stdlib.h").is_file():
        pytest.skip(f"no aarch64 C headers in {AARCH64_LIBC} (apt-get install "
                    "g++-aarch64-linux-gnu)")
    return [clang, f"--target={TARGET}", "-nostdlibinc", "-nostdinc++",
            "-isystem", str(libcxx_headers(clang)), "-isystem", str(APPLE_SDK),
            "-isystem", str(AARCH64_LIBC), "-D_GNU_SOURCE", "-U__nonnull", "-U__nullable",
            "-I", str(CSRC)]


def flags_for(src: Path) -> list:
    """What setup.py compiles `src` with (tools/kernel_build.py), plus -Werror."""
    define = [f"-D{NEON_DEFINE}=1"] if src in kb.CORE_SOURCES else []
    return kb.KERNEL_CFLAGS + kb.isa_flags(src) + define + ["-Werror"]


def test_target_is_apple_arm64(apple_cmd):
    r = subprocess.run(apple_cmd + ["-dM", "-E", "-x", "c++", "-"], input="",
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    macros = set(re.findall(r"^#define (\w+)", r.stdout, re.M))
    assert {"__APPLE__", "__MACH__", "__aarch64__", "__ARM_NEON"} <= macros
    assert "__linux__" not in macros
    # detect.cpp takes its Apple branch: sysctlbyname, not Linux's getauxval.
    detect = CSRC / "cpu" / "neon" / "detect.cpp"
    r = subprocess.run(apple_cmd + flags_for(detect) + ["-E", str(detect)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sysctlbyname(name," in r.stdout and "getauxval(AT_HWCAP" not in r.stdout


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_typechecks_for_apple_arm64(apple_cmd, src):
    r = subprocess.run(apple_cmd + flags_for(src) + ["-fsyntax-only", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(flags_for(src))}\n{r.stderr[-6000:]}"


# ---- the sysctlbyname probe, with stubbed answers ----

DOTPROD, I8MM = "hw.optional.arm.FEAT_DotProd", "hw.optional.arm.FEAT_I8MM"


def set_names() -> dict:
    """The names of the three NEON sets, read from their definitions (set_*.cpp)."""
    names = {}
    for fn, key in (("i8mm_set", "I8MM"), ("dotprod_set", "DOTPROD"), ("baseline_set", "BASE")):
        text = "\n".join(p.read_text() for p in NEON_SOURCES)
        m = re.search(rf"detail::{fn}\(\)\s*\{{[^\"]*\"(\w+)\"", text)
        assert m, f"no KernelSet definition for detail::{fn}() in csrc/cpu/neon"
        names[key] = m.group(1)
    return names


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx})")
    out = tmp_path_factory.mktemp("apple_probe")
    flags = ["-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-I", str(CSRC)]
    names = set_names()
    units = {
        # the production file, unchanged, built as for macOS
        "detect": (CSRC / "cpu" / "neon" / "detect.cpp",
                   ["-U__linux__", "-D__APPLE__", "-isystem", str(APPLE_SDK)]),
        "dispatch": (CSRC / "cpu" / "dispatch.cpp", [f"-D{NEON_DEFINE}=1"]),
        "portable": (CSRC / "cpu" / "portable.cpp", []),
        "apple_probe": (ROOT / "tests" / "native" / "apple_probe.cpp",
                        ["-isystem", str(APPLE_SDK)] + [
                            f'-DTERNARY_NAME_{k}="{v}"' for k, v in names.items()]),
    }
    objs = []
    for name, (src, extra) in units.items():
        obj = out / f"{name}.o"
        subprocess.run([cxx] + flags + extra + ["-c", str(src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = out / "apple_probe"
    subprocess.run([cxx] + objs + ["-o", str(exe)], check=True)
    return exe, names


def run_probe(exe, answers: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TERNARY_OPS_KERNEL"}
    r = subprocess.run([str(exe)] + [f"{k}={v}" for k, v in answers.items() if v is not None],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, (answers, r.returncode, r.stdout, r.stderr)
    got = dict(line.split(":", 1) for line in r.stdout.splitlines())
    return {k: v.split() for k, v in got.items()}


ANSWERS = [None, "err", "0", "1"]  # key absent (ENOENT), failing call, 0, 1


@pytest.mark.parametrize("dotprod,i8mm", list(itertools.product(ANSWERS, ANSWERS)))
def test_sysctl_answers_pick_the_right_sets(probe, dotprod, i8mm):
    exe, names = probe
    got = run_probe(exe, {DOTPROD: dotprod, I8MM: i8mm})
    has_dot = dotprod == "1"
    has_i8mm = has_dot and i8mm == "1"  # i8mm counts only with dotprod (its kernels use SDOT)
    want = ([names["I8MM"]] if has_i8mm else []) + ([names["DOTPROD"]] if has_dot else []) + [
        names["BASE"], "portable"]
    assert got["available"] == want, got
    assert got["selected"] == [want[0]]
    # Exactly these keys, spelled as macOS spells them; I8MM asked only after DotProd said yes.
    assert got["queried"] == [DOTPROD] + ([I8MM] if has_dot else []), got


def test_sysctl_nonzero_values_count_as_present(probe):
    exe, names = probe
    got = run_probe(exe, {DOTPROD: "2", I8MM: "-1"})
    assert got["selected"] == [names["I8MM"]], got
