"""Builds benchmarks/kernel_bench.cpp (torch-free kernel timing) with the shared flag table.

    python benchmarks/build_kernel_bench.py -o build/kernel_bench [--static]
"""
import argparse
import platform
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import kernel_build as kb  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-o", "--out", default="build/kernel_bench")
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--static", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    objdir = out.parent / (out.name + ".objs")
    objdir.mkdir(parents=True, exist_ok=True)
    sources, define = kb.simd_backend(platform.machine())
    defines = [f"-D{define}=1"] if define else []
    objs = []
    for src in kb.CORE_SOURCES + sources + [kb.ROOT / "benchmarks" / "kernel_bench.cpp"]:
        obj = objdir / (src.parent.name + "_" + src.stem + ".o")
        subprocess.check_call(shlex.split(args.cxx) + kb.KERNEL_CFLAGS + kb.isa_flags(src) +
                              defines + ["-fopenmp", "-I", str(kb.CSRC), "-c", str(src), "-o",
                                         str(obj)])
        objs.append(str(obj))
    subprocess.check_call(shlex.split(args.cxx) + objs + ["-fopenmp", "-o", str(out)] +
                          (["-static"] if args.static else []))
    print(out)


if __name__ == "__main__":
    main()
