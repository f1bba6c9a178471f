"""``convert``: replace a model's ``nn.Linear`` layers with ``TernaryLinear`` in place."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Union

import torch
from torch import nn

from .nn import TernaryLinear, _human_bytes

# Output layers left dense by default: quantizing the vocabulary projection costs the most
# accuracy for the least memory (and it is often tied to the embedding).
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "embed_out", "*.embed_out", "output", "classifier",
                   "*.classifier", "score", "*.score")

Filter = Callable[[str, nn.Linear], bool]


@dataclass
class ConvertSummary:
    """What :func:`convert` did. ``bytes_before``/``bytes_after`` cover the replaced weights."""
    replaced: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    @property
    def layers_replaced(self) -> int:
        return len(self.replaced)

    @property
    def compression(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else float("nan")

    def __str__(self) -> str:
        return (f"converted {len(self.replaced)} linear layers ({len(self.skipped)} left dense): "
                f"{_human_bytes(self.bytes_before)} -> {_human_bytes(self.bytes_after)} "
                f"({self.compression:.1f}x smaller)")


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def dense_weight(module: nn.Module):
    """``(weight [out, in], bias)`` of a linear-like module, else ``None``.

    ``nn.Linear`` (and subclasses) and Hugging Face's ``Conv1D`` (GPT-2 family: weight stored
    ``[in, out]``) are recognised.
    """
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        return module.weight.t(), module.bias
    return None


def convert(model: nn.Module, format: str = "i2", act: str = "int8",
            granularity: str = "tensor",
            exclude: Optional[Union[Iterable[str], str]] = None,
            filter: Optional[Filter] = None,
            progress: Optional[bool] = None) -> ConvertSummary:
    """Replaces ``nn.Linear`` (and HF ``Conv1D``) modules of ``model`` with :class:`TernaryLinear`, in place.

    Args:
        format, act, granularity: see :class:`TernaryLinear`.
        exclude: glob patterns of qualified module names to leave dense. Default
            :data:`DEFAULT_EXCLUDE` (``lm_head``-like output layers). Pass ``()`` to convert all.
        filter: ``filter(name, module) -> bool``; only layers it accepts are converted (applied
            after ``exclude``).
        progress: show a progress bar (default: when there are more than 32 layers).

    Layers are converted one at a time and each dense weight is released as soon as its
    replacement is in place, so peak memory stays near the model's own size. Returns a
    :class:`ConvertSummary`.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    patterns = tuple(DEFAULT_EXCLUDE if exclude is None else exclude)
    summary = ConvertSummary()
    targets = []
    for name, module in model.named_modules():
        dense = dense_weight(module)
        if dense is None:
            continue
        if _excluded(name, patterns) or (filter is not None and not filter(name, module)):
            summary.skipped.append(name)
        elif dense[0].device.type == "meta":
            raise ValueError(f"convert: layer '{name}' has its weight on the meta device; load "
                             "the weights before converting")
        else:
            targets.append(name)
    if progress is None:
        progress = len(targets) > 32
    names = targets
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(targets, desc="ternary convert", unit="layer")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        weight, bias = dense_weight(getattr(parent, child))
        with torch.no_grad():
            layer = TernaryLinear.from_dense(weight, bias, format=format, act=act,
                                             granularity=granularity)
        summary.bytes_before += weight.numel() * weight.element_size()
        summary.bytes_after += layer.weight_bytes()
        setattr(parent, child, layer)
        del weight, bias  # the dense weight goes as soon as nothing else holds it
        summary.replaced.append(name)
    return summary
