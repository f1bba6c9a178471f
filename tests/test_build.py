"""The build itself: the optional MPS glue (ternary_ops._C_mps) never fails the install.

setup.py builds the Objective-C++ MPS glue on macOS only, as an optional extension. Our CI has
no Mac, so these tests drive setup.py's optional-build logic on Linux through its test hooks
(setup.py's docstring): TERNARY_OPS_FORCE_MPS_GLUE=1 attempts ternary_ops._C_mps here as on
macOS, and TERNARY_OPS_MPS_GLUE_SOURCE replaces csrc/aten/ops_mps.mm. The package is built
(portable kernels, no CUDA; with clang, Apple's compiler family and the only one that takes
the glue's -fobjc-arc, where it is installed) in a copy of the repository under a temporary
directory, then imported from that copy in a fresh interpreter:

- the real glue (csrc/aten/ops_mps.mm) cannot compile on Linux (clang: ARC needs Apple's
  Objective-C runtime, and the Apple SDK headers are missing; GCC: no -fobjc-arc, no
  Objective-C++): the build still succeeds, prints the warning, and the package imports, runs
  a CPU op and reports no MPS path;
- a Linux stand-in for the glue (tests/mps_glue/standin.cpp, built with clang) builds into
  ternary_ops._C_mps, loads after _C and registers MPS kernels for _C's schemas:
  backends()["mps"] == "native";
- then a glue that does not compile (tests/mps_glue/broken.cpp) warns, shows the compiler's
  error, and removes the module the previous build left, so that nothing stale is imported.

That copy is built with -static-libstdc++, as by a compiler that copies its C++ runtime into
what it links: setup.py still links _C against torch's shared libstdc++, and _C's errors keep
their messages (test_static_runtime_compiler_still_links_the_shared_runtime; the installed
build is checked the same way).

What this cannot show: that the real glue compiles and links with Apple's toolchain (on a Mac,
tools/mac_check.py and tests/test_mps.py).
"""
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from setuptools.errors import CompileError, LinkError

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT / "tests" / "mps_glue"
sys.path.insert(0, str(ROOT / "tools"))
import optional_build  # noqa: E402

WARNING = "WARNING: the optional extension ternary_ops._C_mps"


# ---- the optional-build helper alone (tools/optional_build.py) ----

@pytest.mark.parametrize("error", [
    RuntimeError("Error compiling objects for extension"),            # torch's ninja build
    LinkError("ld: framework not found Metal"),
    CompileError("command 'c++' failed with exit code 1"),
    OSError("clang++: not found"),
])
def test_failed_build_warns_and_removes_stale_outputs(tmp_path, error):
    stale = [tmp_path / "build_lib_C_mps.so", tmp_path / "inplace_C_mps.so"]
    for p in stale:
        p.write_bytes(b"old module")

    def build(ext):
        raise error

    out = io.StringIO()
    ext = SimpleNamespace(name="ternary_ops._C_mps")
    ok = optional_build.build_optional(build, ext, [str(p) for p in stale] + [None],
                                       "the glue", "It works without it.", stream=out)
    assert ok is False
    assert not any(p.exists() for p in stale)
    text = out.getvalue()
    assert WARNING in text and "failed to build" in text and "It works without it." in text
    assert type(error).__name__ in text and str(error) in text
    assert "pip install -v" in text


def test_successful_build_keeps_outputs_and_interrupts_pass(tmp_path):
    target = tmp_path / "m.so"
    out = io.StringIO()
    ext = SimpleNamespace(name="ternary_ops._C_mps")
    assert optional_build.build_optional(lambda e: target.write_bytes(b"new"), ext,
                                         [str(target)], "w", "c", stream=out)
    assert target.read_bytes() == b"new" and out.getvalue() == ""

    def interrupted(ext):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        optional_build.build_optional(interrupted, ext, [str(target)], "w", "c", stream=out)


def test_long_error_is_cut():
    text = optional_build.warning_text("x", RuntimeError("e" * 5000 + "\nlast line"), "w", "c")
    assert "last line" in text and len(text) < 3000


# ---- setup.py in a copy of the repository ----

def _copy_repo(dst: Path) -> Path:
    ignore = shutil.ignore_patterns("*.so", "*.o", "__pycache__", "metal_source.h")
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dst / name)
    for name in ("csrc", "tools", "ternary_ops"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    return dst


CLANG = shutil.which("clang++")


def _build(repo: Path, **env) -> str:
    """python setup.py build_ext --inplace in `repo` (portable kernels, no CUDA, clang where
    installed: one compiler for every build, so ninja never recompiles _C); the output."""
    full = dict(os.environ, TERNARY_OPS_NO_SIMD="1", TERNARY_OPS_NO_CUDA="1", MAX_JOBS="2",
                TERNARY_OPS_FORCE_MPS_GLUE="1")
    full.pop("TERNARY_OPS_MPS_GLUE_SOURCE", None)
    if CLANG:
        full["CXX"] = CLANG
    full.update(env)
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=repo, env=full,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:]
    return r.stdout


PROBE = r"""
import json, sys, torch
import ternary_ops as tops
from ternary_ops import ops
assert tops.__file__.startswith(sys.argv[1]), tops.__file__
x, w, s = torch.randn(3, 16), torch.randint(-1, 2, (5, 16), dtype=torch.int8), torch.rand(5)
y = tops.linear_i8(x, w, s, None, "int8")
assert torch.equal(y, tops.reference.linear_i8(x, w, s, None, "int8"))
got = {"backends": tops.backends(), "error": ops.MPS_NATIVE_ERROR,
       "has_mps_kernel": {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"ternary::{op}",
                                                                             "MPS")
                          for op in ("linear_i8", "linear_i2", "linear_q8")}}
if got["backends"]["mps"] == "native":  # the stand-in's MPS kernel: the frame, then its error
    mps = torch._C.DispatchKeySet(torch._C.DispatchKey.MPS)
    try:
        torch.ops.ternary.linear_i8.default.redispatch(mps, x, w, s, None, "int8")
    except RuntimeError as e:
        got["mps_call"] = str(e)
try:  # a message the C++ checks build (op_checks.h), shapes formatted by c10
    torch.ops.ternary.linear_i8(x, w[:, :15].contiguous(), s, None, "int8")
except ValueError as e:
    got["shape_error"] = str(e).splitlines()[0]
sys.path.insert(1, sys.argv[2])
from helpers import cxx_runtime_file
got["cxx_runtime"] = cxx_runtime_file(tops._C.__file__)
got["extension"] = tops._C.__file__
print("PROBE" + json.dumps(got))
"""

SHAPE_ERROR = ("ternary.linear_i8: x must have shape [..., in_features] with in_features = "
               "weight.size(1) = 15, got x of shape [3, 16]")


def _probe(repo: Path) -> dict:
    """Imports ternary_ops from `repo` in a fresh interpreter; what it reports."""
    import json

    r = subprocess.run([sys.executable, "-c", PROBE, str(repo), str(ROOT / "tests")], cwd=repo,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("PROBE")][-1]
    return json.loads(line[len("PROBE"):])


def _modules(repo: Path) -> list:
    return sorted(p.name.split(".")[0] for p in (repo / "ternary_ops").glob("_C*.so"))


# As a compiler that links the C++ runtime statically by default would.
STATIC_RUNTIME = {"LDFLAGS": "-static-libstdc++"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository, built once with the real glue forced (which fails here), by a
    compiler told to link its C++ runtime statically."""
    repo = _copy_repo(tmp_path_factory.mktemp("repo"))
    return SimpleNamespace(path=repo, first_build=_build(repo, **STATIC_RUNTIME))


@pytest.mark.skipif(sys.platform != "linux", reason="libstdc++ and /proc: Linux")
def test_extension_shares_torchs_cxx_runtime():
    """_C throws its errors with the C++ runtime torch runs with: a second, static copy mixed
    the two in the error paths (garbled messages, or a crash)."""
    import torch

    import ternary_ops
    from helpers import cxx_runtime_file

    own = os.path.realpath(ternary_ops._C.__file__)
    runtime = cxx_runtime_file(own)
    assert runtime != own and "libstdc++" in os.path.basename(runtime), runtime
    x, w = torch.randn(3, 16), torch.zeros(5, 15, dtype=torch.int8)
    with pytest.raises(ValueError) as e:
        torch.ops.ternary.linear_i8(x, w, torch.ones(()), None, "int8")
    assert str(e.value).splitlines()[0] == SHAPE_ERROR


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="libstdc++ and /proc: Linux")
def test_static_runtime_compiler_still_links_the_shared_runtime(repo):
    """setup.py names torch's libstdc++.so.6 to the linker, so even a compiler that would copy
    its runtime in (the fixture's build) leaves _C on the shared one."""
    got = _probe(repo.path)
    assert got["cxx_runtime"] != os.path.realpath(got["extension"]), got
    assert "libstdc++" in os.path.basename(got["cxx_runtime"]), got
    assert got["shape_error"] == SHAPE_ERROR, got


@pytest.mark.slow
def test_failed_glue_build_leaves_a_working_package(repo):
    out = repo.first_build
    assert "building 'ternary_ops._C_mps' extension" in out
    assert "ops_mps" in out  # the compiler ran on the real glue, and failed
    assert WARNING in out and "csrc/aten/ops_mps.mm" in out and "failed to build" in out
    assert "compile_shader" in out and "pip install -v" in out
    assert _modules(repo.path) == ["_C"]
    got = _probe(repo.path)
    assert got["backends"]["mps"] is None
    assert got["backends"]["cpu"] == "portable"
    assert "not installed" in got["error"]
    assert not any(got["has_mps_kernel"].values())


@pytest.mark.slow
@pytest.mark.skipif(CLANG is None, reason="clang++ not installed (apt-get install clang): the "
                    "glue is compiled with -fobjc-arc, which only clang accepts")
def test_glue_module_loads_then_a_broken_one_is_dropped(repo):
    out = _build(repo.path, TERNARY_OPS_MPS_GLUE_SOURCE=str(GLUE / "standin.cpp"))
    assert WARNING not in out, out[-4000:]
    assert _modules(repo.path) == ["_C", "_C_mps"]
    got = _probe(repo.path)
    assert got["backends"]["mps"] == "native" and got["error"] is None
    assert all(got["has_mps_kernel"].values()), got
    # The shared frame ran (device check of linear_frame.h) in the separately built module.
    assert "ternary.linear_i8: the MPS kernel got x on cpu" in got["mps_call"], got

    out = _build(repo.path, TERNARY_OPS_MPS_GLUE_SOURCE=str(GLUE / "broken.cpp"))
    assert "this MPS glue does not compile" in out  # the compiler's own message
    assert WARNING in out and "broken.cpp" in out
    assert _modules(repo.path) == ["_C"]  # the stand-in module from the build above is gone
    assert not list((repo.path / "build").rglob("_C_mps*.so"))
    got = _probe(repo.path)
    assert got["backends"]["mps"] is None and "not installed" in got["error"]

