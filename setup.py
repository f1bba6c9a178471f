"""Build of ternary_ops._C.

One extension module. The op glue and the portable kernels always build; the SIMD backend for
the host architecture (csrc/cpu/x86 on x86-64, csrc/cpu/neon on arm64) builds with per-file ISA flags,
picked by the file name's suffix (tools/kernel_build.py), so one binary runs on any CPU of that
architecture and the dispatcher chooses at run time. CUDA builds when a CUDA toolkit and a
CUDA build of torch are present; Metal builds on macOS.

Install torch first (CPU build on Linux: `pip install torch --index-url .../cpu` or a pinned
local wheel), then `pip install --no-build-isolation -e .` so the build uses that torch.
"""
import os
import platform
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import find_packages, setup
from torch.utils import cpp_extension

sys.path.insert(0, str(Path(__file__).parent / "tools"))
import kernel_build  # noqa: E402
import metal_source  # noqa: E402

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
MACHINE = platform.machine().lower()
IS_MACOS = sys.platform == "darwin"



def simd_backend():
    if os.environ.get("TERNARY_OPS_NO_SIMD") == "1":
        return [], None
    return kernel_build.simd_backend(MACHINE)


def openmp_flags() -> list:
    """-fopenmp for the glue, so at::parallel_for runs in parallel.

    at::parallel_for (ATen/ParallelOpenMP.h) is an inline template whose OpenMP region exists
    only when the including translation unit is compiled with -fopenmp; without it every op ran
    on one thread. Compile-only: the GOMP_* calls resolve to the OpenMP runtime torch has
    already loaded (linking -lgomp would load a second one). GCC only: clang emits calls to
    LLVM's runtime (__kmpc_*), which torch's libgomp does not provide.
    """
    if IS_MACOS or os.environ.get("TERNARY_OPS_NO_OPENMP") == "1":
        return []
    import torch

    if "OpenMP" not in torch.__config__.parallel_info():
        return []
    try:
        ver = subprocess.run(shlex.split(os.environ.get("CXX", "c++")) + ["--version"],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [] if "clang" in ver.lower() else ["-fopenmp"]


def want_cuda() -> bool:
    if os.environ.get("TERNARY_OPS_NO_CUDA") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and any(
        (CSRC / "cuda").glob("*.cu"))


class BuildExt(cpp_extension.BuildExtension):
    """Compiles the torch-free ISA kernels with their own flags, then the glue as usual."""

    def build_extensions(self):
        for ext in self.extensions:
            srcs = getattr(ext, "isa_sources", [])
            if srcs:
                ext.extra_objects = list(ext.extra_objects or []) + self._compile_isa(srcs)
        super().build_extensions()

    def _compile_isa(self, sources):
        cxx = shlex.split(os.environ.get("CXX", "c++"))
        out_dir = Path(self.build_temp) / "isa"
        out_dir.mkdir(parents=True, exist_ok=True)

        def compile_one(src: Path) -> str:
            obj = out_dir / (src.parent.name + "_" + src.stem + ".o")
            deps = kernel_build.header_deps(src)
            if not obj.exists() or obj.stat().st_mtime < max(d.stat().st_mtime for d in deps):
                cmd = cxx + kernel_build.KERNEL_CFLAGS + kernel_build.isa_flags(src) + [
                    "-I", str(CSRC), "-c", str(src), "-o", str(obj)]
                print(" ".join(cmd), flush=True)
                subprocess.check_call(cmd)
            return str(obj)

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            return list(pool.map(compile_one, sources))


def make_extension():
    sources = [CSRC / "ops.cpp", CSRC / "aten" / "ops_cpu.cpp"] + kernel_build.CORE_SOURCES
    defines = []
    isa_sources, simd_define = simd_backend()
    if simd_define and isa_sources:
        defines.append((simd_define, "1"))
    # No FMA contraction: the act="int8" epilogue must round like the reference, bit for bit.
    cxx_flags = ["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"] + openmp_flags()
    kwargs = dict(extra_compile_args={"cxx": cxx_flags}, include_dirs=[str(CSRC)])

    if IS_MACOS:
        # csrc/metal/metal_source.h: the .metal files, their includes inlined, as one string
        metal_source.write_header()
        sources.append(CSRC / "aten" / "ops_mps.mm")
        defines.append(("TERNARY_HAVE_MPS", "1"))
        kwargs["extra_link_args"] = ["-framework", "Metal", "-framework", "Foundation"]
        kwargs["extra_compile_args"]["cxx"] = cxx_flags + ["-fobjc-arc"]

    if want_cuda():
        sources += sorted((CSRC / "cuda").glob("*.cu")) + [CSRC / "aten" / "ops_cuda.cpp"]
        defines.append(("TERNARY_HAVE_CUDA", "1"))
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math",
                                                "-lineinfo"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension

    ext = ext_cls("ternary_ops._C", [str(s.relative_to(ROOT)) for s in sources],
                  define_macros=defines, **kwargs)
    ext.isa_sources = isa_sources
    # setuptools relinks only when a listed source or dependency changed: list the ISA kernels.
    ext.depends = sorted({str(d) for src in isa_sources for d in kernel_build.header_deps(src)})
    return ext


setup(
    packages=find_packages(include=["ternary_ops", "ternary_ops.*"]),
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExt},
)
