"""What works on this Mac: run from the repository root after installing the package.

    python tools/mac_check.py               # environment, backends, ops on mps, tests/test_mps.py
    python tools/mac_check.py --build-glue  # also build the native MPS glue in a scratch copy
                                            # of the repository and show the compiler's output

Prints, in order:
  1. the machine, Python, torch, and whether torch has MPS and torch.mps.compile_shader;
  2. ternary_ops.backends(): "mps" is "native" (the Objective-C++ glue, ternary_ops._C_mps,
     loaded), "compile_shader" (no native glue; the kernels went through
     torch.mps.compile_shader) or None; for a missing native glue, why
     (ternary_ops.ops.MPS_NATIVE_ERROR);
  3. small ops on the mps device against the CPU reference: act="int8" must match bit for bit,
     act="none" to float rounding; and that no op fell back to the slow reference path;
  4. tests/test_mps.py (all but its torch.compile test; --full runs that too, --no-tests skips);
  5. with --build-glue: `python setup.py build_ext --inplace` in a scratch copy (nothing of the
     installed package changes) and whether ternary_ops._C_mps compiled and linked; on failure,
     the compiler's messages.
Closes with "N passed, N failed" over the checks, and exits 1 if any failed. Runs anywhere;
off a Mac, the MPS checks report what is missing.
"""
import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
results = []  # (name, ok or None for "not run", detail)


def record(name, ok, detail=""):
    results.append((name, ok, detail))
    tag = {True: "ok  ", False: "FAIL", None: "skip"}[ok]
    print(f"[{tag}] {name}" + (f": {detail}" if detail else ""), flush=True)


def environment():
    import torch

    print(f"machine: {platform.platform()} ({platform.machine()}), Python {sys.version.split()[0]}")
    mps = getattr(torch, "mps", None)
    info = {
        "torch": torch.__version__,
        "torch.backends.mps.is_built()": torch.backends.mps.is_built(),
        "torch.backends.mps.is_available()": torch.backends.mps.is_available(),
        "torch.mps.compile_shader": hasattr(mps, "compile_shader"),
    }
    for k, v in info.items():
        print(f"  {k}: {v}")
    return info


def backends():
    try:
        import ternary_ops as tops
        from ternary_ops import ops
    except Exception:
        record("import ternary_ops", False, traceback.format_exc(limit=3))
        return None
    record("import ternary_ops", True, tops.__file__)
    b = tops.backends()
    print(f"  backends(): {b}")
    print(f"  CPU kernel sets available: {tops.cpu_kernels_available()}")
    native = sorted(p.name for p in Path(tops.__file__).parent.glob("_C_mps*"))
    print(f"  native MPS glue module on disk: {native or 'none'}")
    if ops.MPS_NATIVE_ERROR:
        print(f"  why no native MPS glue: {ops.MPS_NATIVE_ERROR}")
    return b


def cpu_op():
    import torch
    import ternary_ops as tops

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 96, generator=gen)
    t = torch.randint(-1, 2, (40, 96), generator=gen, dtype=torch.int8)
    s = torch.rand(40, generator=gen) + 0.5
    y = tops.linear_i2(x, tops.pack_i2(t), s, 40, None, "int8")
    want = tops.reference.linear_i8(x, t, s, None, "int8")
    record("CPU op (i2, act=int8) matches the reference bit for bit", torch.equal(y, want),
           f"kernel set {tops.cpu_kernel()}")


def mps_ops(path):
    import torch
    import ternary_ops as tops

    if not torch.backends.mps.is_available():
        record("ops on mps", None, "torch.backends.mps.is_available() is False")
        return
    if path is None:
        record("an MPS path serves the ops", False,
               "backends()['mps'] is None: no native glue and no torch.mps.compile_shader "
               "(PyTorch >= 2.7); ops on mps run the slow reference")
    gen = torch.Generator().manual_seed(1)
    for fmt in ("i2", "i8"):
        for act in ("int8", "none"):
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                for m, n, k in ((1, 67, 131), (5, 33, 200)):
                    name = f"mps {fmt} act={act} {str(dtype)[6:]} {m}x{n}x{k}"
                    try:
                        x = torch.randn(m, k, generator=gen).to(dtype)
                        t = torch.randint(-1, 2, (n, k), generator=gen, dtype=torch.int8)
                        s = torch.rand(n, generator=gen) + 0.5
                        b = torch.randn(n, generator=gen).to(dtype)
                        w = tops.pack_i2(t) if fmt == "i2" else t
                        want = tops.reference.linear_i8(x, t, s, b, act)
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            if fmt == "i2":
                                y = tops.linear_i2(x.to("mps"), w.to("mps"), s.to("mps"), n,
                                                   b.to("mps"), act)
                            else:
                                y = tops.linear_i8(x.to("mps"), w.to("mps"), s.to("mps"),
                                                   b.to("mps"), act)
                            y = y.cpu()
                        fell_back = any("no native kernel" in str(c.message) for c in caught)
                        if act == "int8":
                            ok = torch.equal(y, want)
                        else:
                            ok = torch.allclose(y.float(), want.float(), rtol=2e-2, atol=2e-2)
                        diff = (y.float() - want.float()).abs().max().item()
                        record(name, ok and not fell_back,
                               f"max |diff| {diff:.3g}" + (" (reference fallback ran)"
                                                           if fell_back else ""))
                    except Exception as e:
                        record(name, False, f"{type(e).__name__}: {e}")


def run_tests(full):
    if not (ROOT / "tests" / "test_mps.py").is_file():
        record("tests/test_mps.py", None, "not in this checkout")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_mps.py"]
    if not full:
        cmd += ["-k", "not compile"]
    print("  " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    record("tests/test_mps.py" + ("" if full else " (-k 'not compile')"), r.returncode == 0,
           f"pytest exit {r.returncode}")


def build_glue():
    """Builds the package in a scratch copy; reports the native MPS glue's fate."""
    if sys.platform != "darwin" and os.environ.get("TERNARY_OPS_FORCE_MPS_GLUE") != "1":
        record("native MPS glue build", None, "setup.py builds it on macOS only")
        return
    with tempfile.TemporaryDirectory(prefix="ternary-ops-build-") as tmp:
        dst = Path(tmp)
        ignore = shutil.ignore_patterns("*.so", "*.o", "__pycache__", "metal_source.h", "build")
        for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE"):
            shutil.copy2(ROOT / name, dst / name)
        for name in ("csrc", "tools", "ternary_ops"):
            shutil.copytree(ROOT / name, dst / name, ignore=ignore)
        env = dict(os.environ, TERNARY_OPS_NO_CUDA="1")
        print(f"  building in {dst} (a few minutes) ...", flush=True)
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=dst,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = Path(tempfile.gettempdir()) / "ternary-ops-mac-check-build.log"
        log.write_text(r.stdout)
        if r.returncode != 0:
            record("build (scratch copy)", False, f"exit {r.returncode}; log {log}")
            print(r.stdout[-6000:])
            return
        record("build (scratch copy)", True, f"log {log}")
        built = list((dst / "ternary_ops").glob("_C_mps*"))
        if not built:
            start = r.stdout.find("building 'ternary_ops._C_mps'")
            print(r.stdout[start:][-8000:] if start >= 0 else r.stdout[-8000:])
            record("native MPS glue compiles and links", False, f"see the output above; {log}")
            return
        record("native MPS glue compiles and links", True, built[0].name)
        probe = ("import ternary_ops as t, torch; print(t.backends()); "
                 "x = torch.randn(2, 64, device='mps'); "
                 "w = torch.randint(-1, 2, (8, 64), dtype=torch.int8); s = torch.rand(8); "
                 "y = t.linear_i8(x, w.to('mps'), s.to('mps'), None, 'int8').cpu(); "
                 "assert t.backends()['mps'] == 'native'; "
                 "assert torch.equal(y, t.reference.linear_i8(x.cpu(), w, s, None, 'int8'))")
        p = subprocess.run([sys.executable, "-c", probe], cwd=dst, capture_output=True, text=True)
        record("the freshly built native glue runs an op on mps", p.returncode == 0,
               (p.stdout + p.stderr).strip()[-2000:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build-glue", action="store_true",
                    help="also build the package in a scratch copy and report the native glue")
    ap.add_argument("--full", action="store_true", help="run all of tests/test_mps.py")
    ap.add_argument("--no-tests", action="store_true", help="skip tests/test_mps.py")
    args = ap.parse_args(argv)

    print("== environment")
    environment()
    print("== ternary_ops")
    b = backends()
    if b is not None:
        cpu_op()
        print("== ops on mps")
        mps_ops(b["mps"])
        if not args.no_tests:
            print("== tests/test_mps.py")
            run_tests(args.full)
    if args.build_glue:
        print("== native MPS glue, built from this checkout")
        build_glue()

    passed = sum(ok is True for _, ok, _ in results)
    failed = sum(ok is False for _, ok, _ in results)
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
