"""Builds the torch-free native programs: the CPU kernel tier plus one program's own sources.

The tier (csrc/cpu: portable kernels, dispatcher and the SIMD backend of the target
architecture) is compiled with tools/kernel_build.py's flags, each ISA file with its own ISA
flags, then linked with the program's sources into one executable.

    python tools/native_build.py harness -o build/harness                    # host
    python tools/native_build.py harness -o build/harness-aarch64 --arch aarch64 \\
        --cxx aarch64-linux-gnu-g++ --static                                 # for qemu-user
    python tools/native_build.py harness -o build/harness-asan --sanitize    # ASan + UBSan
    python tools/native_build.py kernel_bench -o build/kernel_bench          # benchmarks/cpu
    python tools/native_build.py int8_edges -o build/int8_edges              # tests/native

The compiler is --cxx, else $CXX, else c++. Objects go to OUT.objs/ next to OUT.
"""
import argparse
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_build as kb  # noqa: E402

# name -> (its own sources, extra flags for every compile and the link)
PROGRAMS = {
    "harness": ([kb.ROOT / "tests" / "native" / "harness.cpp"], []),
    "int8_edges": ([kb.ROOT / "tests" / "native" / "int8_edges.cpp"], []),
    "kernel_bench": ([kb.ROOT / "benchmarks" / "cpu" / "kernel_bench.cpp"], ["-fopenmp"]),
}

SANITIZE = ["-fsanitize=address,undefined"]


def compile_flags(sanitize: bool = False) -> list:
    flags = list(kb.KERNEL_CFLAGS)
    if sanitize:
        flags = [f for f in flags if f != "-O3"] + ["-O1", "-g"] + SANITIZE + [
            "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
    return flags


def compile_tier(objdir: Path, arch: str = None, cxx: str = None, sanitize: bool = False,
                 extra=()) -> list:
    """Compiles the CPU tier for `arch` (default: this machine) into objdir; returns the objects."""
    sources, define = kb.simd_backend(arch or platform.machine())
    return [_compile(src, objdir, define, cxx, sanitize, extra)
            for src in kb.CORE_SOURCES + sources]


def link(objs, out: Path, cxx: str = None, sanitize: bool = False, static: bool = False,
         extra=()) -> Path:
    out = Path(out)
    cmd = _cxx(cxx) + [str(o) for o in objs] + list(extra) + ["-o", str(out)]
    cmd += (["-static"] if static else []) + (SANITIZE if sanitize else [])
    subprocess.check_call(cmd)
    return out


def build(out: Path, sources, arch: str = None, cxx: str = None, sanitize: bool = False,
          static: bool = False, extra=(), tier_objs=None) -> Path:
    """Builds the executable `out` from the CPU tier and `sources` (the program's own files).

    `extra` flags go to every compile and to the link. `tier_objs` (from compile_tier, built
    with the same arch, compiler and flags) reuses a tier already compiled for another program.
    """
    out = Path(out)
    objdir = out.parent / (out.name + ".objs")
    objdir.mkdir(parents=True, exist_ok=True)
    if tier_objs is None:
        tier_objs = compile_tier(objdir, arch, cxx, sanitize, extra)
    _, define = kb.simd_backend(arch or platform.machine())
    objs = list(tier_objs) + [_compile(Path(s), objdir, define, cxx, sanitize, extra)
                              for s in sources]
    return link(objs, out, cxx, sanitize, static, extra)


def build_program(name: str, out: Path, **kwargs) -> Path:
    """Builds one of PROGRAMS (harness, int8_edges, kernel_bench) as `out`."""
    sources, extra = PROGRAMS[name]
    return build(out, sources, extra=list(extra) + list(kwargs.pop("extra", ())), **kwargs)


def _cxx(cxx):
    return shlex.split(cxx or os.environ.get("CXX") or "c++")


def _compile(src: Path, objdir: Path, define, cxx, sanitize, extra) -> str:
    objdir.mkdir(parents=True, exist_ok=True)
    obj = objdir / (src.parent.name + "_" + src.stem + ".o")
    defines = [f"-D{define}=1"] if define else []
    subprocess.check_call(_cxx(cxx) + compile_flags(sanitize) + kb.isa_flags(src) + defines +
                          list(extra) + ["-I", str(kb.CSRC), "-c", str(src), "-o", str(obj)])
    return str(obj)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("program", choices=sorted(PROGRAMS))
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--arch", default=platform.machine())
    ap.add_argument("--cxx", default=None, help="compiler command (default: $CXX, else c++)")
    ap.add_argument("--sanitize", action="store_true", help="AddressSanitizer + UBSan, -O1 -g")
    ap.add_argument("--static", action="store_true")
    args = ap.parse_args()
    print(build_program(args.program, Path(args.out), arch=args.arch, cxx=args.cxx,
                        sanitize=args.sanitize, static=args.static))


if __name__ == "__main__":
    main()
