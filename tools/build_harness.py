"""Builds the torch-free native kernel harness (tests/native/harness.cpp).

    python tools/build_harness.py -o build/harness                    # host
    python tools/build_harness.py -o build/harness-arm64 --arch aarch64 --cxx aarch64-linux-gnu-g++ --static
    python tools/build_harness.py -o build/harness-asan --sanitize    # ASan + UBSan
"""
import argparse
import platform
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_build as kb  # noqa: E402


def build(out: Path, arch: str, cxx: str, sanitize: bool, static: bool, extra=()) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    objdir = out.parent / (out.name + ".objs")
    objdir.mkdir(exist_ok=True)
    simd_sources, define = kb.simd_backend(arch)
    flags = kb.KERNEL_CFLAGS + list(extra)
    if sanitize:
        flags = [f for f in flags if f != "-O3"] + ["-O1", "-g", "-fsanitize=address,undefined",
                                                    "-fno-omit-frame-pointer",
                                                    "-fno-sanitize-recover=all"]
    defines = [f"-D{define}=1"] if define else []
    objs = []
    for src in kb.CORE_SOURCES + simd_sources + [kb.ROOT / "tests" / "native" / "harness.cpp"]:
        obj = objdir / (src.parent.name + "_" + src.stem + ".o")
        cmd = shlex.split(cxx) + flags + kb.isa_flags(src) + defines + [
            "-I", str(kb.CSRC), "-c", str(src), "-o", str(obj)]
        subprocess.check_call(cmd)
        objs.append(str(obj))
    link = shlex.split(cxx) + objs + ["-o", str(out)] + (["-static"] if static else [])
    if sanitize:
        link.append("-fsanitize=address,undefined")
    subprocess.check_call(link)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--arch", default=platform.machine())
    ap.add_argument("--cxx", default="c++")
    ap.add_argument("--sanitize", action="store_true")
    ap.add_argument("--static", action="store_true")
    args = ap.parse_args()
    print(build(Path(args.out), args.arch, args.cxx, args.sanitize, args.static))


if __name__ == "__main__":
    main()
