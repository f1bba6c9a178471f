"""LoRA adapters on a frozen ternary model, with PEFT (``pip install "ternary-ops[peft]"``).

    import ternary_ops.lora as tlora
    from peft import LoraConfig, PeftModel, get_peft_model

    tlora.register_with_peft()     # PEFT's LoRA now takes TernaryLinear layers as targets
    model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    ...                            # train: only the adapters' A and B are trainable
    model.save_pretrained("adapter/")
    model = PeftModel.from_pretrained(base, "adapter/")

:class:`TernaryLoraLinear` is the LoRA layer of a :class:`~ternary_ops.TernaryLinear` (or of a
:class:`~ternary_ops.FusedSlice`: q/k/v and gate/up that ``convert`` fused stay fused, and each
adapter adds its own rows): ``y = base(x) + B(A(dropout(x))) * scaling``, the base's ternary op
unchanged and its packed weight an integer buffer that no optimizer touches. Where ``convert``
folded an RMSNorm into the layer, ``x`` is normalised for the adapter (the input the layer reads
in the unfolded model), so an adapter means the same on a fused, folded or plain model. Merging
is refused: ``W + B @ A * scaling`` is not ternary (see :meth:`TernaryLoraLinear.merge`).

Registration uses PEFT's custom-module mechanism (``LoraConfig._register_custom_module``):
:func:`register` (or :func:`lora_config`) registers on one config; :func:`register_with_peft`
registers on every ``LoraConfig`` PEFT builds layers from, including the one
``PeftModel.from_pretrained`` reads from an adapter folder. Importing this module imports
``peft``; ``import ternary_ops`` never does.
"""
from __future__ import annotations

import warnings
from typing import List, Optional

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel
from peft.tuners.lora.layer import Linear as _LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer

from .fuse import FusedSlice
from .nn import TernaryLinear

__all__ = ["TernaryLoraLinear", "register", "lora_config", "register_with_peft"]


def _describe(layer: torch.nn.Module) -> str:
    if isinstance(layer, FusedSlice):
        fused = layer.fused.layer_name or layer.source
        return f"rows {layer.start}:{layer.stop} of the fused ternary layer '{fused}'"
    name = getattr(layer, "layer_name", None)
    return f"the ternary layer '{name}'" if name else "a ternary layer"


class TernaryLoraLinear(_LoraLinear):
    """PEFT's LoRA layer around a frozen :class:`~ternary_ops.TernaryLinear` or
    :class:`~ternary_ops.FusedSlice` (built by PEFT once registered, see the module docstring).

    The adapters (``lora_A``, ``lora_B``, float32 by default) and their state-dict keys are
    PEFT's own for ``nn.Linear``. Plain LoRA only: DoRA and the other variants need the base
    weight in float, and are refused; so is merging."""

    def __init__(self, base_layer: torch.nn.Module, adapter_name: str, **kwargs):
        base = (base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer)
                else base_layer)
        if getattr(base, "fused_from", None):
            members = ", ".join(base.fused_from)
            raise ValueError(
                f"LoRA: {_describe(base)} is the fused layer of {members}, which "
                "call it directly, so an adapter on it would never run. Target the member "
                f"names ({members}) instead: each gets its own adapter on its rows")
        config = kwargs.get("config")
        if getattr(config, "use_dora", kwargs.get("use_dora", False)):
            raise ValueError(f"LoRA: DoRA is not supported on {_describe(base)} "
                             "(it needs the base weight in float); use plain LoRA "
                             "(use_dora=False)")
        with warnings.catch_warnings():  # PEFT warns about any layer type it does not know
            warnings.filterwarnings("ignore", "Unsupported layer type '<class 'ternary_ops")
            super().__init__(base_layer, adapter_name, **kwargs)

    def resolve_lora_variant(self, **kwargs):  # its arguments differ between PEFT versions
        variant = super().resolve_lora_variant(**kwargs)
        if variant is not None:
            raise ValueError(f"LoRA: the variant {type(variant).__name__} is not supported on "
                             f"{_describe(self.get_base_layer())}; use plain LoRA")
        return None

    def _adapter_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as the adapters see it: normalised where the layer applies a folded norm."""
        base = self.get_base_layer()
        layer = base.fused if isinstance(base, FusedSlice) else base
        norm = layer.input_norm
        return x if norm is None else norm.apply_norm(x)

    def _lora(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        lora_A = self.lora_A[adapter]
        x = self.lora_dropout[adapter](x.to(lora_A.weight.dtype))
        return self.lora_B[adapter](lora_A(x)) * self.scaling[adapter]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        dtype, h = result.dtype, None
        if adapter_names is None:  # the active adapters, on every row
            for adapter in self.active_adapters:
                if adapter in self.lora_A:
                    h = self._adapter_input(x) if h is None else h
                    result = result + self._lora(adapter, h)
        else:  # one adapter per batch row ("__base__": none)
            for adapter in sorted(set(adapter_names) & set(self.lora_A.keys())):
                rows = torch.tensor([i for i, a in enumerate(adapter_names) if a == adapter],
                                    device=x.device)
                h = self._adapter_input(x[rows])
                result = result.index_add(0, rows, self._lora(adapter, h).to(dtype))
        return result.to(dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[List[str]] = None) -> None:
        """Refused: the merged weight ``W + B @ A * scaling`` is not ternary, so neither this
        layer's format nor the ternary ops can hold it."""
        raise ValueError(
            f"LoRA: cannot merge an adapter into {_describe(self.get_base_layer())}:"
            " the merged weight W + B @ A * scaling is not ternary (s * T with T in {-1, 0, +1}),"
            " so it cannot be stored in the layer's packed format or run by the ternary ops. Keep"
            " the adapter unmerged (the ternary op plus two small matmuls per layer), or merge"
            " into a dense model: TernaryLoraLinear.merged_dense_weight() gives the layer's dense"
            " weight with its adapters added")

    def merged_dense_weight(self, adapter_names: Optional[List[str]] = None) -> torch.Tensor:
        """The dense float32 weight ``[out_features, in_features]`` of the base layer with the
        adapters ``adapter_names`` (default: the active ones) added: ``s * T + sum B @ A *
        scaling``, for a dense ``nn.Linear`` (with the base's bias) that reads the same input
        the adapters do (normalised, where the layer applies a folded norm). It computes what
        this layer computes with act="none"; act="int8" also rounds the base's activations."""
        names = self.active_adapters if adapter_names is None else adapter_names
        with torch.no_grad():
            weight = self.get_base_layer().dequantize(torch.float32)
            for adapter in names:
                if adapter in self.lora_A:
                    a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
                    weight = weight + (b.float() @ a.float()) * self.scaling[adapter]
        return weight


# Ternary layer types -> their LoRA layer, for LoraConfig._register_custom_module.
CUSTOM_MODULES = {TernaryLinear: TernaryLoraLinear, FusedSlice: TernaryLoraLinear}


def register(config: LoraConfig) -> LoraConfig:
    """Registers the ternary layers with ``config`` (PEFT's custom-module mechanism) and returns
    it: ``get_peft_model(model, register(LoraConfig(...)))``, or, to load an adapter,
    ``PeftModel.from_pretrained(model, path, config=register(LoraConfig.from_pretrained(path)))``.
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"register: expected a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module(CUSTOM_MODULES)
    return config


def lora_config(**kwargs) -> LoraConfig:
    """``LoraConfig(**kwargs)`` with the ternary layers registered (:func:`register`)."""
    return register(LoraConfig(**kwargs))


def register_with_peft() -> None:
    """Makes every ``LoraConfig`` take ternary layers as targets, without :func:`register`:
    plain ``get_peft_model(model, LoraConfig(...))``, ``PeftModel.from_pretrained(model, path)``
    and transformers' ``model.load_adapter(path)`` then work on converted models. It wraps
    PEFT's ``LoraModel._create_new_module``, which builds each LoRA layer, to register the
    ternary layers on the config it is given (nothing else changes). Calling it again does
    nothing."""
    create = LoraModel.__dict__.get("_create_new_module")
    if not isinstance(create, staticmethod):
        import peft
        raise RuntimeError(f"register_with_peft: peft {peft.__version__} has no "
                           "LoraModel._create_new_module to extend; use ternary_ops.lora.register"
                           "(config) instead")
    if getattr(create.__func__, "_ternary_ops", False):
        return
    original = create.__func__

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        register(lora_config)
        return original(lora_config, adapter_name, target, **kwargs)

    _create_new_module._ternary_ops = True
    LoraModel._create_new_module = staticmethod(_create_new_module)
