"""Packed weights on 2 MiB pages (Linux): one buffer of transparent huge pages for a model's
integer weights, so that streaming them at batch-1 decode takes few TLB misses."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

import torch
from torch import nn

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # Linux
_ALIGN = 64  # every weight starts on a cache line
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode() -> Optional[str]:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None off
    Linux or when it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(_THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def _madvise_huge(address: int, length: int) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return libc.madvise(address, length, _MADV_HUGEPAGE) == 0


def use_huge_pages(model: nn.Module) -> int:
    """Moves the packed integer weights of ``model`` that are on the CPU (every
    :class:`~ternary_ops.TernaryLinear`, :class:`~ternary_ops.Int8Linear` and
    :class:`~ternary_ops.Int8Embedding`) into one buffer that Linux backs with 2 MiB
    transparent huge pages (``madvise(MADV_HUGEPAGE)`` before the first touch). Returns the
    bytes moved; 0, changing nothing, off Linux, when the kernel's mode is ``never``, or when
    there is nothing to move.

    Values do not change, only where they live: each weight becomes a view of the shared
    buffer (a weight two modules share stays shared). ``convert``, ``load``,
    ``from_pretrained_bitnet`` (from a folder) and ``load_pretrained`` call it; call it again
    after building or changing layers by hand. Moving the model to another device, or
    replacing a weight, leaves the buffer (it is freed with its last view).
    """
    from .nn import _PackedWeight

    mode = _thp_mode()
    if mode not in ("always", "madvise"):
        return 0
    owners = {}  # id(weight) -> (weight, [modules holding it])
    for module in model.modules():
        w = module._buffers.get("weight") if isinstance(module, _PackedWeight) else None
        if w is None or w.device.type != "cpu" or not w.is_contiguous() or w.is_floating_point():
            continue
        owners.setdefault(id(w), (w, []))[1].append(module)
    if not owners:
        return 0
    sizes = [(w.numel() * w.element_size() + _ALIGN - 1) // _ALIGN * _ALIGN
             for w, _ in owners.values()]
    total = (sum(sizes) + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    arena = torch.empty(total + HUGE_PAGE, dtype=torch.uint8)  # not touched yet
    start = (arena.data_ptr() + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    if not _madvise_huge(start, total):
        return 0
    offset = start - arena.data_ptr()
    moved = 0
    items = list(owners.values())
    owners.clear()
    with torch.no_grad():
        for i, size in enumerate(sizes):
            # The buffer's pages are touched as it fills, and each old weight is released right
            # after its copy: peak memory stays near one copy of the weights, not two.
            w, modules = items[i]
            items[i] = None
            n = w.numel() * w.element_size()
            view = arena[offset:offset + n].view(w.dtype).view(w.shape)
            view.copy_(w)
            for module in modules:
                module._buffers["weight"] = view
            del w, modules
            offset += size
            moved += n
    return moved
