"""Build of ternary_ops._C and, on macOS, the optional ternary_ops._C_mps.

ternary_ops._C holds the op schemas, the CPU kernels and, where CUDA is available, the CUDA
kernels. The op glue and the portable kernels always build; the SIMD backend for the host
architecture (csrc/cpu/x86 on x86-64, csrc/cpu/neon on arm64) builds with per-file ISA flags,
picked by the file name's suffix (tools/kernel_build.py), so one binary runs on any CPU of that
architecture and the dispatcher chooses at run time. CUDA builds when a CUDA toolkit and a
CUDA build of torch are present.

ternary_ops._C_mps, on macOS only, is the Objective-C++ MPS glue (csrc/aten/ops_mps.mm, which
registers the Metal kernels for the MPS dispatch key, and csrc/aten/mps_module.cpp, the module
itself); only it is compiled with -fobjc-arc and linked with the Metal and Foundation
frameworks. It is optional (tools/optional_build.py): if it fails to compile or link, the build
prints a warning and goes on, and the package works without it (CPU kernels in _C; on Apple
GPUs the torch.mps.compile_shader path where PyTorch has it, see ternary_ops.backends()).

Install torch first (CPU build on Linux: `pip install torch --index-url .../cpu` or a pinned
local wheel), then `pip install --no-build-isolation -e .` so the build uses that torch.

Environment: TERNARY_OPS_NO_SIMD=1 (portable kernels only), TERNARY_OPS_NO_CUDA=1,
TERNARY_OPS_NO_OPENMP=1, MAX_JOBS (parallel compiles). Test hooks (tests/test_build.py), for
exercising the optional build where it cannot succeed:
  TERNARY_OPS_FORCE_MPS_GLUE=1       attempt ternary_ops._C_mps on any platform, with the same
                                     sources and compile flags as on macOS (the frameworks,
                                     a macOS linker feature, are linked on macOS only); on
                                     Linux the real .mm cannot compile (no Objective-C++
                                     compiler or Apple SDK headers)
  TERNARY_OPS_MPS_GLUE_SOURCE=PATH   compile PATH in place of csrc/aten/ops_mps.mm
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
import optional_build  # noqa: E402

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"
MACHINE = platform.machine().lower()
IS_MACOS = sys.platform == "darwin"
FORCE_MPS_GLUE = os.environ.get("TERNARY_OPS_FORCE_MPS_GLUE") == "1"
MPS_GLUE_NOTE = (
    "ternary-ops works without it: the CPU kernels (portable, x86 SIMD or NEON) are in "
    "ternary_ops._C, and on Apple GPUs the ops run through torch.mps.compile_shader where "
    "PyTorch (>= 2.7) has it, else through the slow reference path; "
    "ternary_ops.backends()['mps'] says which ('compile_shader' or None).")


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


def cxx_runtime_link_args() -> list:
    """On Linux, the C++ runtime this process (torch) runs with, named to the linker first.

    Some compilers link libstdc++ statically by default. _C then carries a second copy of the
    runtime next to torch's shared one, and the two mix in our error paths: a message built by
    one copy's streams and finished by the other's came out garbled, or ended the process.
    Naming the loaded libstdc++.so.6 ahead of the compiler's own runtime resolves every C++
    runtime symbol to it, so nothing is copied in and _C depends on libstdc++.so.6 like torch.
    """
    if platform.system() != "Linux":
        return []
    import torch  # noqa: F401  (loads the runtime it was built with)

    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libstdc++.so") and os.path.isfile(path):
                    return [path]
    except OSError:
        pass
    return []


def want_cuda() -> bool:
    if os.environ.get("TERNARY_OPS_NO_CUDA") == "1":
        return False
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None and any(
        (CSRC / "cuda").glob("*.cu"))


class BuildExt(cpp_extension.BuildExtension):
    """Compiles the torch-free ISA kernels with their own flags, then the glue as usual; an
    optional extension (the MPS glue) that fails to build only warns."""

    def run(self):
        self._inplace_wanted = bool(self.inplace)  # setuptools clears inplace while building
        super().run()

    def build_extensions(self):
        if ".mm" not in self.compiler.src_extensions:  # torch adds it where it has MPS
            self.compiler.src_extensions = list(self.compiler.src_extensions) + [".mm"]
        for ext in self.extensions:
            srcs = getattr(ext, "isa_sources", [])
            if srcs:
                ext.extra_objects = list(ext.extra_objects or []) + self._compile_isa(srcs)
        super().build_extensions()

    def build_extension(self, ext):
        if not ext.optional:
            return super().build_extension(ext)
        outputs = [self.get_ext_fullpath(ext.name)]
        if getattr(self, "_inplace_wanted", False):  # the copy --inplace / -e left in the tree
            package = ".".join(ext.name.split(".")[:-1])
            package_dir = self.get_finalized_command("build_py").get_package_dir(package)
            outputs.append(os.path.join(package_dir,
                                        os.path.basename(self.get_ext_filename(ext.name))))
        optional_build.build_optional(super().build_extension, ext, outputs,
                                      ext.optional_what, ext.optional_note)

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


def base_cxx_flags() -> list:
    # No FMA contraction: the act="int8" epilogue must round like the reference, bit for bit.
    return ["-O3", "-std=c++17", "-fno-math-errno", "-ffp-contract=off"]


def make_extension():
    sources = [CSRC / "ops.cpp", CSRC / "aten" / "ops_cpu.cpp"] + kernel_build.CORE_SOURCES
    defines = []
    isa_sources, simd_define = simd_backend()
    if simd_define and isa_sources:
        defines.append((simd_define, "1"))
    cxx_flags = base_cxx_flags() + openmp_flags()
    kwargs = dict(extra_compile_args={"cxx": cxx_flags}, include_dirs=[str(CSRC)],
                  extra_link_args=cxx_runtime_link_args())

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

    ext = ext_cls("ternary_ops._C", [rel(s) for s in sources],
                  define_macros=defines, **kwargs)
    ext.isa_sources = isa_sources
    # setuptools relinks only when a listed source or dependency changed: list the ISA kernels.
    ext.depends = sorted({str(d) for src in isa_sources for d in kernel_build.header_deps(src)})
    return ext


def make_mps_extension():
    """ternary_ops._C_mps: the Objective-C++ MPS glue, an optional module of its own.

    Everything it takes from the project is in headers (aten/linear_frame.h, aten/op_checks.h,
    ternary_format.h, metal/ternary_metal_config.h, the generated metal/metal_source.h); it
    registers kernels for schemas that _C defines, so ternary_ops imports _C first.
    """
    # csrc/metal/metal_source.h: the .metal files, their includes inlined, as one string
    metal_source.write_header()
    glue = Path(os.environ.get("TERNARY_OPS_MPS_GLUE_SOURCE") or CSRC / "aten" / "ops_mps.mm")
    sources = [glue.resolve(), CSRC / "aten" / "mps_module.cpp"]
    ext = cpp_extension.CppExtension(
        "ternary_ops._C_mps", [rel(s) for s in sources], include_dirs=[str(CSRC)],
        extra_compile_args={"cxx": base_cxx_flags() + ["-fobjc-arc"]},
        extra_link_args=(["-framework", "Metal", "-framework", "Foundation"] if IS_MACOS
                         else cxx_runtime_link_args()),
        depends=[str(p) for p in sorted((CSRC / "aten").glob("*.h")) + [
            CSRC / "ternary_format.h", CSRC / "metal" / "ternary_metal_config.h",
            metal_source.HEADER]],
        optional=True)
    ext.optional_what = f"the native MPS glue, {rel(glue)}"
    ext.optional_note = MPS_GLUE_NOTE
    return ext


def rel(path) -> str:
    """A source path as setuptools wants it: relative to this directory where it is inside."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


setup(
    packages=find_packages(include=["ternary_ops", "ternary_ops.*"]),
    ext_modules=[make_extension()] + ([make_mps_extension()] if IS_MACOS or FORCE_MPS_GLUE
                                      else []),
    cmdclass={"build_ext": BuildExt},
)
