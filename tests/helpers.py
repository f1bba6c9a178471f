"""What the test files share: making cases, running an op and the reference, the assertions
(bit for bit for act="int8", a dtype's tolerance for act="none") and forcing a CPU kernel set.

The test files import it as ``helpers`` (pytest puts tests/ on sys.path). Random data comes
from ``gen`` (a seeded CPU generator: the same case on every machine, then copied to the device
under test) or, with ``gen=None``, from torch's global generator, which conftest.py seeds afresh
for every test.
"""
import contextlib
from typing import NamedTuple, Optional

import pytest
import torch

import ternary_ops as tops
from ternary_ops import reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ODD_DIMS = [1, 3, 5, 17, 63, 65, 257, 1000]

# ---- act="none" tolerances, per x dtype ----------------------------------------------------
# CPU kernels (assert_matches): rtol = tol, atol = tol * gain * sqrt(K).
CPU_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}
# NEON kernels (assert_matches), same form.
NEON_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
# CUDA (check: relative L2 error). The M > 8 path rounds the GEMM result to x's dtype before
# the scale: two roundings.
CUDA_REL_TOL = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
# MPS (check: relative L2 error). float32 sums over K up to 40000 drift ~eps * sqrt(K) from the
# reference's order.
MPS_REL_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def dtype_id(dtype):
    """Test id of a dtype: "float32", "bfloat16", "float16"."""
    return str(dtype).split(".")[-1]


# ---- making cases ---------------------------------------------------------------------------

def random_codes(n, k, gen=None, device="cpu"):
    """int8 [n, k] ternary codes, uniform over {-1, 0, 1}."""
    return torch.randint(-1, 2, (n, k), generator=gen, dtype=torch.int8, device=device)


def random_scale(n, per_channel, gen=None, offset=0.05):
    """float32 scale in [offset, 1 + offset): [n] per channel, a 0-d tensor per tensor."""
    if not isinstance(per_channel, bool):  # a granularity string here would always be truthy
        raise TypeError(f"per_channel must be a bool, got {per_channel!r}")
    return (torch.rand(n if per_channel else (), generator=gen) + offset).float()


def to_format(codes, fmt):
    """The op's weight for ``fmt``: the int8 codes themselves (i8) or pack_i2(codes) (i2)."""
    if fmt not in ("i8", "i2"):
        raise ValueError(f"unknown format {fmt!r}")
    return tops.pack_i2(codes) if fmt == "i2" else codes


class Weight(NamedTuple):
    codes: torch.Tensor   # int8 [N, K]
    weight: torch.Tensor  # to_format(codes, fmt)
    scale: torch.Tensor


def random_weight(fmt, n, k, gen=None, *, per_channel, scale_offset=0.05):
    """Draws codes, then the scale (see random_scale)."""
    codes = random_codes(n, k, gen)
    scale = random_scale(n, per_channel, gen, scale_offset)
    return Weight(codes, to_format(codes, fmt), scale)


class Case(NamedTuple):
    """One problem for the op of ``fmt``; ``to(device)`` copies it, ``run`` calls the op where
    its tensors are, ``ref`` evaluates the reference on the CPU."""
    fmt: str
    codes: torch.Tensor
    weight: torch.Tensor
    scale: torch.Tensor
    x: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]

    @property
    def n(self):
        return self.codes.shape[0]

    def to(self, device):
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return self._replace(codes=move(self.codes), weight=move(self.weight),
                             scale=move(self.scale), x=move(self.x), bias=move(self.bias))

    def run(self, act, x=None):
        """The op on this case (or on ``x`` with this case's weight, scale and bias)."""
        return run_op(self.fmt, self.x if x is None else x, self.weight, self.scale, self.n,
                      self.bias, act)

    def ref(self, act, x=None):
        return run_ref(self.fmt, self.x if x is None else x, self.weight, self.scale, self.n,
                       self.bias, act)


def make_case(fmt, m, n, k, gen=None, *, per_channel=False, bias=False, dtype=torch.float32,
              x_gain=1.0, scale_offset=0.05, bias_dtype=None):
    """A fresh case on the CPU. Draws, in this order: the codes, the scale (random_weight), x of
    shape [m, k] (or [*m, k] for a tuple m) as a normal sample times ``x_gain`` (a number, or a
    function called after that sample, e.g. for a gain per row) cast to ``dtype``, and, if
    ``bias``, a normal bias [n] cast to ``bias_dtype`` (default: ``dtype``)."""
    w = random_weight(fmt, n, k, gen, per_channel=per_channel, scale_offset=scale_offset)
    x = torch.randn((m, k) if isinstance(m, int) else (*m, k), generator=gen)
    x = (x * (x_gain() if callable(x_gain) else x_gain)).to(dtype)
    b = torch.randn(n, generator=gen).to(bias_dtype or dtype) if bias else None
    return Case(fmt, w.codes, w.weight, w.scale, x, b)


def with_offset(t, offset, device=None):
    """A contiguous copy of ``t`` on ``device`` (default: t's) that starts ``offset`` elements
    into a larger storage (an address with ``offset`` times the element size past an
    allocation's start: not 16-byte aligned for small odd offsets)."""
    flat = torch.empty(t.numel() + offset + 3, dtype=t.dtype, device=device or t.device)
    v = flat[offset:offset + t.numel()].view(t.shape)
    v.copy_(t)
    return v


# ---- running the op and the reference -------------------------------------------------------

def op_call(fmt, x, w, scale, n, bias, act):
    """(op, args) of the native op for ``fmt``: linear_i2 takes out_features ``n``, linear_i8
    does not. The last two args are always bias and act."""
    if fmt == "i2":
        return torch.ops.ternary.linear_i2, (x, w, scale, n, bias, act)
    return torch.ops.ternary.linear_i8, (x, w, scale, bias, act)


def run_op(fmt, x, w, scale, n, bias, act):
    """The native op for ``fmt`` on whatever device its arguments are on."""
    op, args = op_call(fmt, x, w, scale, n, bias, act)
    return op(*args)


def run_ref(fmt, x, w, scale, n, bias, act):
    """ternary_ops.reference for ``fmt``, on CPU copies of the arguments."""
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    if fmt == "i2":
        return reference.linear_i2(cpu(x), cpu(w), cpu(scale), n, cpu(bias), act)
    return reference.linear_i8(cpu(x), cpu(w), cpu(scale), cpu(bias), act)


# ---- assertions -----------------------------------------------------------------------------

def assert_bit_exact(got, want, what=""):
    """Same dtype, same shape, every value equal (torch.equal), NaN where and only where the
    other has NaN. The message names up to five places that differ, their values and the
    largest difference."""
    if got.dtype != want.dtype or got.shape != want.shape:
        raise AssertionError(f"{what}: got {got.dtype} {list(got.shape)}, "
                             f"want {want.dtype} {list(want.shape)}")
    if torch.equal(got, want):
        return
    got, want = got.cpu(), want.cpu()
    both_nan = got.isnan() & want.isnan()
    if both_nan.any():
        got, want = got.masked_fill(both_nan, 0), want.masked_fill(both_nan, 0)
        if torch.equal(got, want):
            return
    bad = ((got != want) | (got.isnan() != want.isnan())).nonzero()[:5].tolist()
    at = tuple(zip(*bad))
    worst = (got.double() - want.double()).abs().max().item()
    raise AssertionError(f"{what}: not bit-exact at {bad}: {got[at].tolist()} vs "
                         f"{want[at].tolist()} (max |diff| {worst:.3g})")


def assert_matches(got, want, act, *, tol, k, gain=1.0, what=""):
    """act="int8": bit for bit. act="none": torch.testing.assert_close of float32 copies with
    rtol = tol and atol = tol * gain * sqrt(k) (a sum over K of activations of size ~gain)."""
    if act == "int8":
        assert_bit_exact(got, want, what)
        return
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * gain * k ** 0.5,
                               msg=(lambda s: f"{what}: {s}") if what else None)


def check(out, ref, act, what, *, rel_tol, dtype=None, finite=False):
    """An op output (any device) against the reference (CPU): same dtype and shape, all finite
    if ``finite``; act="int8" bit for bit, act="none" a relative L2 error below
    ``rel_tol[dtype]`` (dtype: ``out``'s by default)."""
    out = out.cpu()
    assert out.dtype == ref.dtype and out.shape == ref.shape, what
    if finite:
        assert torch.isfinite(out).all(), what
    if act == "int8":
        assert_bit_exact(out, ref, what)
    else:
        tol = rel_tol[out.dtype if dtype is None else dtype]
        o, r = out.double(), ref.double()
        err = ((o - r).norm() / r.norm().clamp(min=1e-30)).item()
        assert err < tol, f"{what}: relative error {err:.3g} >= {tol}"


# ---- the build -------------------------------------------------------------------------------

def cxx_runtime_file(shared_object: str) -> str:
    """The file that serves ``shared_object``'s C++ runtime (its ``__cxa_throw``, looked up
    from that object as the dynamic linker does): the object itself where a copy of the
    runtime was linked into it, else the shared runtime (libstdc++.so.6 on Linux)."""
    import ctypes
    import os

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    throw = ctypes.CDLL(shared_object)["__cxa_throw"]
    info = DlInfo()
    assert ctypes.CDLL(None).dladdr(ctypes.cast(throw, ctypes.c_void_p), ctypes.byref(info))
    return os.path.realpath(info.dli_fname.decode())


# ---- CPU kernel sets ------------------------------------------------------------------------

def skip_unless_cpu_kernel(name):
    if name not in tops.cpu_kernels_available():
        pytest.skip(f"kernel set {name} is not available on this CPU")


@contextlib.contextmanager
def forced_cpu_kernel(name):
    """Serves the ops with CPU kernel set ``name`` inside the block (skips the test where this
    CPU lacks it), then gives the choice back to the dispatcher ("auto")."""
    skip_unless_cpu_kernel(name)
    tops.select_cpu_kernel(name)
    try:
        yield name
    finally:
        tops.select_cpu_kernel("auto")
