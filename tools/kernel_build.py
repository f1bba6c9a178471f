"""Where the torch-free kernel sources are and which flags each needs.

One place, used by setup.py (the extension) and by tools/native_build.py (the torch-free native
programs: the kernel harness, also cross-compiled for aarch64 and built under sanitizers, the
kernel benchmark and the native test programs).
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# File-name suffix -> the ISA flags that translation unit (and only it) is built with, so one
# binary runs on any CPU of its architecture and the dispatcher picks kernels at run time. Each
# backend folder holds one set_<isa>.cpp per kernel set (set_avx2.cpp, set_i8mm.cpp, ...); a file
# with no suffix here (detect.cpp, set_base.cpp) is built without ISA flags.
ISA_FLAGS = {
    "_avx2": ["-mavx2", "-mfma", "-mf16c"],
    "_avxvnni": ["-mavx2", "-mfma", "-mavxvnni"],
    "_avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                "-mavx512vnni"],
    "_amx": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
             "-mavx512vnni", "-mamx-tile", "-mamx-int8"],
    "_dotprod": ["-march=armv8.2-a+dotprod"],
    "_i8mm": ["-march=armv8.6-a+dotprod+i8mm"],
}
# -ffp-contract=off: in C++ GCC fuses a * b + c into one FMA by default, even across statements,
# wherever FMA exists (always on AArch64; x86 units built with -mfma). That changes the rounding
# of the act=int8 epilogue `dot / inv * s + bias` (seen in the harness's expected values on
# AArch64) and breaks bit-exactness with the reference.
KERNEL_CFLAGS = ["-O3", "-std=c++17", "-fPIC", "-Wall", "-Wextra", "-fno-math-errno",
                 "-ffp-contract=off"]

# Sources every build has (torch-free).
CORE_SOURCES = [CSRC / "cpu" / "portable.cpp", CSRC / "cpu" / "dispatch.cpp",
                CSRC / "cpu" / "rms_norm.cpp"]

# arch -> (backend folder under csrc/, define that enables it in cpu/dispatch.cpp)
SIMD_BACKENDS = {
    "x86_64": ("cpu/x86", "TERNARY_HAVE_X86"),
    "aarch64": ("cpu/neon", "TERNARY_HAVE_NEON"),
}


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def isa_flags(src: Path) -> list:
    for suffix, flags in ISA_FLAGS.items():
        if src.stem.endswith(suffix):
            return list(flags)
    return []


def simd_backend(arch: str):
    """(sources, define) of the SIMD backend for `arch`, or ([], None)."""
    folder, define = SIMD_BACKENDS.get(normalize_arch(arch), (None, None))
    if folder is None:
        return [], None
    sources = sorted((CSRC / folder).glob("*.cpp"))
    return (sources, define) if sources else ([], None)


def header_deps(src: Path) -> list:
    """Headers a kernel source may include (coarse, for rebuild checks)."""
    return [src] + sorted(CSRC.glob("*.h")) + sorted(src.parent.glob("*.h")) + sorted(
        (CSRC / "cpu").glob("*.h"))
