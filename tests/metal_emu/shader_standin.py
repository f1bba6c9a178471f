"""A stand-in for ``torch.mps.compile_shader`` on machines without an Apple GPU (tests only).

``compile_shader(source)`` compiles the exact text it is given as C++ against the Metal
emulator (``metal_emu.h``: the same one tests/test_metal_emulated.py uses) and returns a library
whose attributes are its kernels, as PyTorch's ``_mps_ShaderLibrary`` does. Calling a kernel
binds its arguments the way PyTorch's binding does (torch/csrc/mps/Module.cpp, MetalKernelFunction
in aten/src/ATen/native/mps/OperationUtils.mm), then runs it on the emulator (standin.cpp):

* argument i goes to ``[[buffer(i)]]``; a tensor binds its storage at ``storage_offset *
  element_size`` bytes (here a CPU tensor plays the MPS tensor: its storage is copied into a
  fenced buffer, the kernel runs, and the bytes are copied back, so results land in the tensor
  as on the GPU);
* a Python int is an int64, a float a float32, a list of ints int64s, a list of floats float32s,
  each passed with ``setBytes``; ``arg_casts`` (one cast name, or ``{index: name}``) converts
  them to ``fp16``, ``bf16``, ``int32``, ``int16``, ``int8`` or ``uint8`` first;
* ``threads`` (1 to 3 numbers; by default the first tensor's numel) and ``group_size`` (as many
  numbers; by default the pipeline's maximum along x) are ``dispatchThreads``' grid and
  threadgroup size, at most 1024 threads per group;
* no threadgroup memory length can be set: a kernel with a ``threadgroup(0)`` argument gets 0
  bytes (its first use is reported), as on the GPU, where the length stays 0.

Stricter than Metal, because these kernels need it: the grid must be whole threadgroups
(``threads`` a multiple of ``group_size``: dispatchThreads would otherwise run a partial group,
whose barriers and simdgroup reductions these kernels do not allow for), every buffer offset
aligned to the element type the kernel reads there, exactly the kernel's six arguments, and
``setBytes`` of exactly ``sizeof(LinearParams)``. The stand-in knows these kernels' signature
(buffer(0..4) device pointers, buffer(5) the parameter block); anything else is rejected.
Each call's kernel name, grid and bound bytes are appended to ``library.calls``.
"""
import ctypes
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
MAX_THREADS_PER_THREADGROUP = 1024
THREAD_EXECUTION_WIDTH = 32
# How the emulated kernels are compiled (as tests/test_metal_emulated.py): Metal's integer
# model (signed char), no FMA contraction, warnings as errors.
FLAGS = ["-O2", "-fPIC", "-shared", "-std=c++17", "-fsigned-char", "-fno-strict-aliasing",
         "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-Wno-attributes"]

_CASTS = {"fp16": "<e", "int32": "<i", "int16": "<h", "int8": "<b", "uint8": "<B"}
_INT_BITS = {"int32": 32, "int16": 16, "int8": 8, "uint8": 8}


class _Arg(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("ptr", ctypes.c_void_p), ("length", ctypes.c_uint64),
                ("offset", ctypes.c_uint64)]


_built = {}  # sha256 of the source -> ctypes library (one build per source per process)


def _cxx():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler ({cxx}) to build the compile_shader stand-in")
    return cxx


def _embed_headers(source: str) -> str:
    """What torch.mps.compile_shader does to the text before Metal sees it: quoted and angle
    includes found under torch/include are inlined (none of ours are)."""
    try:
        from torch.utils._cpp_embed_headers import _embed_headers
    except ImportError:
        return source
    return _embed_headers([line + "\n" for line in source.split("\n")],
                          [Path(torch.__file__).parent / "include"], set())


def _build(source: str):
    key = hashlib.sha256(source.encode()).hexdigest()
    if key in _built:
        return _built[key]
    out = Path(tempfile.mkdtemp(prefix="tmetal_standin_"))
    # One directory holding the emulator, the stand-in and the shader, and nothing else on the
    # include path: the shader may include <metal_stdlib> (Metal's own) and nothing more.
    for name in ("metal_emu.h", "guarded.h", "metal_stdlib", "standin.cpp"):
        shutil.copy(HERE / name, out / name)
    (out / "shader.metal").write_text(source)
    so = out / "libstandin.so"
    r = subprocess.run([_cxx()] + FLAGS + [f"-I{out}", '-DTMETAL_SHADER="shader.metal"',
                                            str(out / "standin.cpp"), "-o", str(so)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        # newLibraryWithSource's compile failure reaches Python as a SyntaxError
        raise SyntaxError(f"compile_shader stand-in: the source does not compile:\n"
                          f"{r.stderr[-6000:]}")
    lib = ctypes.CDLL(str(so))
    lib.tmetal_kernel_name.restype = ctypes.c_char_p
    lib.tmetal_dispatch.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Arg), ctypes.c_int,
                                    ctypes.POINTER(ctypes.c_uint64),
                                    ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint,
                                    ctypes.c_char_p, ctypes.c_int]
    _built[key] = lib
    return lib


def compile_shader(source: str) -> "ShaderLibrary":
    """``torch.mps.compile_shader`` on the emulator."""
    if not isinstance(source, str):
        raise TypeError("compile_shader: source must be a str")
    try:
        source.encode("ascii")  # PyTorch hands Metal the text as an NSASCIIStringEncoding string
    except UnicodeEncodeError as e:
        raise RuntimeError(f"compile_shader: the source is not ASCII ({e})") from None
    return ShaderLibrary(_build(_embed_headers(source)))


def _vector(value, name):
    """optional_vec_from_pyobject: None, an int, or 1 to 3 ints."""
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    vec = [int(v) for v in value]
    if not 0 < len(vec) < 4:
        raise RuntimeError(f"{name} must have 1 to 3 dimensions, got {len(vec)}")
    if any(v < 0 for v in vec):
        raise TypeError(f"{name} must be non-negative")  # pybind's uint64 cast
    return vec


def _cast_for(arg_casts, idx):
    if arg_casts is None:
        return ""
    if isinstance(arg_casts, str):
        return arg_casts
    if isinstance(arg_casts, dict):
        return arg_casts.get(idx, "")
    raise RuntimeError(f"Unexpected caster arg type {type(arg_casts).__name__}")


def _pack(values, is_float, cast):
    """The bytes setArg passes for a list of values, after the cast."""
    if cast == "":
        return b"".join(struct.pack("<f" if is_float else "<q", v) for v in values)
    if cast == "bf16":
        f32 = torch.tensor(values, dtype=torch.float32)
        return f32.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    if cast not in _CASTS:
        raise RuntimeError(f"Unsupported cast instruction {cast}")
    if cast == "fp16":
        return b"".join(struct.pack("<e", float(v)) for v in values)
    bits = _INT_BITS[cast]
    out = []
    for v in values:
        v = int(v)  # C++ static_cast: floats truncate, integers wrap
        v &= (1 << bits) - 1
        if cast != "uint8" and v >= 1 << (bits - 1):
            v -= 1 << bits
        out.append(struct.pack(_CASTS[cast], v))
    return b"".join(out)


def _scalar_bytes(arg, cast):
    if isinstance(arg, (list, tuple)):
        if len(arg) == 0:
            raise RuntimeError("Empty list/tuple can not be an argument to metal kernel")
        first = arg[0]
        if isinstance(first, int):
            return _pack([int(v) for v in arg], False, cast)
        if isinstance(first, float):
            return _pack([float(v) for v in arg], True, cast)
        if isinstance(first, torch.Tensor):
            raise NotImplementedError("compile_shader stand-in: lists of tensors (GPU address "
                                      "arrays) are not emulated")
        raise RuntimeError("Unexpected argument types")
    if isinstance(arg, float):
        return _pack([arg], True, cast)
    if isinstance(arg, int):
        return _pack([arg], False, cast)
    raise RuntimeError("Unsupported argument type")


class MetalKernel:
    """One kernel of a stand-in library: ``kernel(*args, threads=..., group_size=...,
    arg_casts=...)``."""

    max_threads_per_threadgroup = MAX_THREADS_PER_THREADGROUP
    thread_execution_width = THREAD_EXECUTION_WIDTH

    def __init__(self, library, name):
        self._library = library
        self.name = name

    def __call__(self, *args, threads=None, group_size=None, arg_casts=None):
        threads = _vector(threads, "threads")
        group = _vector(group_size, "group_size")
        keep = []  # bytes objects alive until the call returns
        bound = []
        for idx, arg in enumerate(args):
            if isinstance(arg, torch.Tensor):
                if arg.device.type != "cpu":
                    raise RuntimeError("compile_shader stand-in: CPU tensors play the MPS "
                                       f"buffers; got a tensor on {arg.device}")
                st = arg.untyped_storage()
                bound.append(("buffer", st.data_ptr(), st.nbytes(),
                              arg.storage_offset() * arg.element_size()))
                if threads is None:
                    threads = [arg.numel()]
                continue
            data = _scalar_bytes(arg, _cast_for(arg_casts, idx))
            keep.append(data)
            bound.append(("bytes", data))
        if threads is None:
            raise RuntimeError("Number of threads is undefined or has wrong dimension")
        if group is not None and len(group) != len(threads):
            raise RuntimeError("threads and group_size must have the same number of dimensions")
        if group is None:  # MetalKernelFunction::dispatch's defaults
            group = ([min(threads[0], MAX_THREADS_PER_THREADGROUP)] if len(threads) == 1
                     else [MAX_THREADS_PER_THREADGROUP] + [1] * (len(threads) - 1))
        size = 1
        for g in group:
            size *= g
        if size > MAX_THREADS_PER_THREADGROUP:
            raise ValueError(f"Threadgroup size exceeds {MAX_THREADS_PER_THREADGROUP} limit")

        c_args = (_Arg * max(len(bound), 1))()
        for i, b in enumerate(bound):
            if b[0] == "buffer":
                c_args[i] = _Arg(0, b[1], b[2], b[3])
            else:
                c_args[i] = _Arg(1, ctypes.cast(ctypes.c_char_p(b[1]), ctypes.c_void_p).value,
                                 len(b[1]), 0)
        t3 = (ctypes.c_uint64 * 3)(*(threads + [1] * (3 - len(threads))))
        g3 = (ctypes.c_uint64 * 3)(*(group + [1] * (3 - len(group))))
        err = ctypes.create_string_buffer(1024)
        seed = int.from_bytes(os.urandom(4), "little")  # a fresh fiber order every call
        self._library.calls.append({
            "name": self.name, "threads": list(threads), "group_size": list(group),
            "bytes": {i: b[1] for i, b in enumerate(bound) if b[0] == "bytes"}})
        rc = self._library._lib.tmetal_dispatch(self.name.encode(), c_args, len(bound), t3, g3,
                                                seed, err, len(err))
        if rc != 0:
            raise RuntimeError(f"compile_shader stand-in: {err.value.decode()}")


class ShaderLibrary:
    """What ``compile_shader`` returns: kernels as attributes."""

    def __init__(self, lib):
        self._lib = lib
        self.calls = []
        self._names = [lib.tmetal_kernel_name(i).decode() for i in range(lib.tmetal_kernel_count())]

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._names:
            raise RuntimeError(f"Failed to create function state object for: {name}")
        return MetalKernel(self, name)

    def __dir__(self):
        return list(self._names)
