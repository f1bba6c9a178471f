"""``convert``: replace a model's ``nn.Linear`` layers with ``TernaryLinear`` in place (or
convert one bare layer into a new ``TernaryLinear``)."""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .fuse import fold_norms as fold_norms_into_layers
from .fuse import fuse_projections
from .memory import use_huge_pages
from .nn import Int8Embedding, Int8Linear, TernaryLinear, _human_bytes
from .qat import QATLinear

# Output layers left dense by default: quantizing the vocabulary projection costs the most
# accuracy for the least memory (and it is often tied to the embedding).
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "embed_out", "*.embed_out", "output", "classifier",
                   "*.classifier", "score", "*.score")

Filter = Callable[[str, nn.Linear], bool]

# The median relative output error of the converted layers above which convert() warns that the
# weights were not ternary. A ternary weight stored dense converts exactly (its outputs then
# differ by act="int8"'s activation rounding, about 1%); absmean ternarization of a normally
# trained (or initialised) weight changes its outputs by about 50%.
ERROR_WARN_THRESHOLD = 0.1
# Rows of each layer's input kept from a calibration batch; rows of random input otherwise.
CALIBRATION_ROWS = 32


class TernarizationWarning(UserWarning):
    """:func:`convert` measured that ternarizing the model changed its layers' outputs far more
    than rounding would: the weights were not ternary to begin with."""


@dataclass
class ConvertSummary:
    """What :func:`convert` did. ``bytes_before``/``bytes_after`` cover the replaced weights.
    ``notes`` says why a layer in ``skipped`` was left dense when it was not by ``exclude`` or
    ``filter``, and which replaced layers were untied from a weight they shared.
    ``int8`` names the head and embedding kept at 8 bits (``head=`` / ``embedding="int8"``;
    an int8 head is also in ``replaced``). ``already_ternary`` counts the layers that were
    ``TernaryLinear`` before the call (left as they are). ``attention`` names the attention
    function a ``transformers`` model was switched to (see :mod:`ternary_ops.hf.attention`), or
    is ``None``. ``fused`` maps each fused layer to the layers it replaced, ``folded`` each
    folded norm to the layers that apply it (:mod:`ternary_ops.fuse`). ``errors`` maps each
    converted layer to its relative output error ``|y_ternary - y_dense| / |y_dense|`` (bias
    left out) on the inputs ``calibration`` names (``"random inputs"``, ``"calibration
    batch"``, or ``None`` when not measured)."""
    replaced: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    notes: Dict[str, str] = field(default_factory=dict)
    already_ternary: int = 0
    attention: Optional[str] = None
    int8: List[str] = field(default_factory=list)
    fused: Dict[str, List[str]] = field(default_factory=dict)
    folded: Dict[str, List[str]] = field(default_factory=dict)
    errors: Dict[str, float] = field(default_factory=dict)
    calibration: Optional[str] = None

    @property
    def layers_replaced(self) -> int:
        return len(self.replaced)

    @property
    def compression(self) -> float:
        return self.bytes_before / self.bytes_after if self.bytes_after else float("nan")

    def __str__(self) -> str:
        already = (f"{self.already_ternary} layers already TernaryLinear, left as they are"
                   if self.already_ternary else "")
        if not self.replaced:
            if self.skipped:
                text = (f"converted no layers ({len(self.skipped)} linear layers left dense"
                        + (f"; {already})" if already else ")"))
            elif already:
                text = f"converted no layers ({already})"
            else:
                text = "converted no layers: the model has no nn.Linear or Conv1D layer"
        else:
            text = (f"converted {len(self.replaced)} linear layers ({len(self.skipped)} left "
                    f"dense): {_human_bytes(self.bytes_before)} -> "
                    f"{_human_bytes(self.bytes_after)} ({self.compression:.1f}x smaller)"
                    + (f"; {already}" if already else ""))
        if self.fused:
            kinds = sorted({"/".join(m.rpartition(".")[2] for m in members) + " -> "
                            + name.rpartition(".")[2] for name, members in self.fused.items()})
            text += f"; fused {len(self.fused)} groups ({', '.join(kinds)})"
        if self.folded:
            kinds = sorted({name.rpartition(".")[2] for name in self.folded})
            text += f"; folded {len(self.folded)} RMSNorms into their layers ({', '.join(kinds)})"
        if self.int8:
            text += f"; int8: {', '.join(self.int8)}"
        if self.attention:
            text += f"; attention: {self.attention} (the SDPA backend of decode steps per device)"
        if self.errors:
            text += f"; relative output error {self.error_text()}"
        return text + "".join(f"\n  {name}: {why}" for name, why in self.notes.items())

    def error_text(self) -> str:
        """``median X% (largest Y% in 'layer') over N layers on <calibration>``."""
        values = sorted(self.errors.values())
        worst = max(self.errors, key=self.errors.get)
        return (f"median {values[len(values) // 2]:.1%} (largest {self.errors[worst]:.1%} in "
                f"'{worst}') over {len(values)} layers on {self.calibration}")


def _float64_warning(what: str) -> str:
    return (f"convert: the {what} is float64, but the ternary ops take float32, bfloat16 or "
            f"float16 input; call {what}.float() (or .bfloat16()) before running it")


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


def weight_owners(model: nn.Module) -> Dict[int, List[str]]:
    """``id(parameter) -> qualified names of the modules holding it`` (more than one name for a
    tied weight)."""
    owners: Dict[int, List[str]] = {}
    for name, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return owners


def untie_config(config) -> None:
    """Sets a Hugging Face config's ``tie_word_embeddings`` to False (on its text config too,
    where it has one), so that ``tie_weights()`` and a later load do not tie an output layer
    that now has its own ternary weight back to the embedding. ``None`` is a no-op."""
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for c in configs:
        if getattr(c, "tie_word_embeddings", False):
            c.tie_word_embeddings = False


def _turn_off_fast_paths(model: nn.Module, targets, summary: ConvertSummary) -> None:
    """``nn.TransformerEncoderLayer`` has an inference fast path (eval mode, no grad) that reads
    ``linear1`` / ``linear2``'s ``.weight`` directly instead of calling them. Where either is
    about to be replaced, that layer's fast path is turned off (it checks
    ``activation_relu_or_gelu``, which nothing else reads; the activation itself is
    ``.activation``), and so is the nested-tensor path of an ``nn.TransformerEncoder`` that
    holds it, which would feed such a layer nested tensors."""
    layers = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.TransformerEncoderLayer):
            continue
        dot = f"{name}." if name else ""
        if not {dot + "linear1", dot + "linear2"} & targets:
            continue
        layers.add(id(module))
        if module.activation_relu_or_gelu:
            module.activation_relu_or_gelu = 0
            summary.notes[name or type(module).__name__] = (
                "inference fast path turned off: it reads linear1 / linear2's weight directly "
                "instead of calling them")
    for name, module in model.named_modules():
        if (isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor",
                                                                  False)
                and any(id(m) in layers for m in module.layers)):
            module.use_nested_tensor = False
            summary.notes[name or type(module).__name__] = (
                "nested-tensor fast path turned off (its layers now call ternary layers)")


def _head_names(model: nn.Module) -> List[str]:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        return [n for n, m in model.named_modules() if m is out]
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and _excluded(n, DEFAULT_EXCLUDE)]


def _capture_inputs(model: nn.Module, targets: List[str], batch) -> Dict[str, torch.Tensor]:
    """Runs ``model`` on ``batch`` (a tensor: ``model(batch)``; a dict: ``model(**batch)``; a
    tuple or list: ``model(*batch)``) and returns the first :data:`CALIBRATION_ROWS` input rows
    of each target layer's first call, float32 ``[rows, in_features]``. The model runs in eval
    mode (no dropout, no update of batch-norm statistics) and is put back as it was."""
    captured: Dict[str, torch.Tensor] = {}
    hooks = []
    training = model.training
    for name in targets:
        def keep(module, args, name=name):
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                x = args[0].detach()
                captured[name] = x.reshape(-1, x.shape[-1])[:CALIBRATION_ROWS].float().clone()
        hooks.append(model.get_submodule(name).register_forward_pre_hook(keep))
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return captured


def _relative_error(dense: Union[torch.Tensor, QATLinear], layer: TernaryLinear,
                    x: torch.Tensor) -> float:
    """``|layer(x) - x @ weight.T| / |x @ weight.T|`` for a dense ``weight``, or against a
    :class:`QATLinear`'s own forward; biases left out, in float32."""
    with torch.no_grad():
        x = x.to(device=dense.weight.device if isinstance(dense, QATLinear) else dense.device,
                 dtype=torch.float32)
        if isinstance(dense, QATLinear):
            want = dense(x).float()
            if dense.bias is not None:
                want = want - dense.bias.float()
        else:
            want = x @ dense.float().t()
        got = layer(x).float()
        if layer.bias is not None:
            got = got - layer.bias.float()
        return float((got - want).norm() / want.norm().clamp_min(torch.finfo(torch.float32).tiny))


def _warn_if_not_ternary(summary: ConvertSummary) -> None:
    if not summary.errors:
        return
    values = sorted(summary.errors.values())
    if values[len(values) // 2] <= ERROR_WARN_THRESHOLD:
        return
    warnings.warn(TernarizationWarning(
        f"convert: ternarizing changed the converted layers' outputs by "
        f"{summary.error_text()}: these weights were not ternary to begin with. Plain "
        "ternarization of a normally trained model loses most of its quality. Use a model "
        "trained ternary (a BitNet b1.58 checkpoint: ternary_ops.hf.from_pretrained_bitnet), or "
        "train or distill one ternary (ternary_ops.prepare_qat). If these are the latent "
        "weights of a model trained ternary (BitNet's bf16 master weights), the ternary model is "
        "the trained one and this warning is expected. summary.errors holds each layer's error; "
        "convert(..., calibration=False) skips the measurement"), stacklevel=3)


def check_head_and_embedding(head: str, embedding: str, where: str) -> None:
    """Raises ``ValueError`` (prefixed with ``where``) unless both are "dense" or "int8"."""
    for arg, value in (("head", head), ("embedding", embedding)):
        if value not in ("dense", "int8"):
            raise ValueError(f"{where}: {arg} must be 'dense' or 'int8', got {value!r}")


def quantize_head_and_embedding(model: nn.Module, head: str = "dense", embedding: str = "dense",
                                act: str = "int8",
                                summary: Optional[ConvertSummary] = None) -> ConvertSummary:
    """Keeps a model's output head and/or input embedding at 8 bits (format q8), in place:
    ``head="int8"`` makes the head an :class:`Int8Linear` (with this ``act``),
    ``embedding="int8"`` the input embedding an :class:`Int8Embedding`. What ``convert(model,
    head=..., embedding=...)`` does after the ternary layers; also for models whose other
    layers are ternary already (e.g. from :func:`ternary_ops.hf.from_pretrained_bitnet`)."""
    check_head_and_embedding(head, embedding, "quantize_head_and_embedding")
    summary = ConvertSummary() if summary is None else summary
    tied = head == "int8" and embedding == "int8" and _head_tied_to_embedding(model)
    if head == "int8":
        _quantize_head(model, act, weight_owners(model), summary)
    if embedding == "int8":
        _quantize_embedding(model, summary, model.get_output_embeddings() if tied else None)
    return summary


def _head_tied_to_embedding(model: nn.Module) -> bool:
    if not (hasattr(model, "get_output_embeddings") and hasattr(model, "get_input_embeddings")):
        return False
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    return (isinstance(out, nn.Linear) and isinstance(emb, nn.Embedding)
            and out.weight is emb.weight)


def _quantize_head(model: nn.Module, act: str, owners, summary: ConvertSummary) -> None:
    names = [n for n in _head_names(model) if isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise ValueError("convert: head='int8' but the model has no nn.Linear output head "
                         "(get_output_embeddings() or a layer named like "
                         f"{DEFAULT_EXCLUDE[:2]})")
    for name in names:
        module = model.get_submodule(name)
        if module.weight.device.type == "meta":
            raise ValueError(f"convert: head '{name}' has its weight on the meta device")
        shared = [o for o in owners.get(id(module.weight), []) if o != name]
        with torch.no_grad():
            layer = Int8Linear.from_linear(module, act=act)
        layer.layer_name = name
        summary.bytes_before += module.weight.numel() * module.weight.element_size()
        summary.bytes_after += layer.weight_bytes()
        if shared:
            summary.notes[name] = f"untied from '{shared[0]}', which keeps its own weight"
            untie_config(getattr(model, "config", None))  # the q8 tensors are shared instead
        if name in summary.skipped:
            summary.skipped.remove(name)
        model.set_submodule(name, layer)
        summary.replaced.append(name)
        summary.int8.append(name)


def _quantize_embedding(model: nn.Module, summary: ConvertSummary,
                        tied_head: Optional[Int8Linear] = None) -> None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(emb, nn.Embedding):
        raise ValueError("convert: embedding='int8' needs a model whose get_input_embeddings() "
                         f"is an nn.Embedding, got {type(emb).__name__}")
    name = next(n for n, m in model.named_modules() if m is emb)
    if tied_head is not None:
        # The head was quantized from this very weight, row by row as the embedding would be:
        # one set of int8 rows and scales serves both.
        new = Int8Embedding.from_q8(tied_head.weight, tied_head.weight_scale, emb.padding_idx,
                                    dtype=emb.weight.dtype)
        head_name = next(n for n, m in model.named_modules() if m is tied_head)
        summary.notes[head_name] = f"shares its int8 weight and scales with '{name}'"
    else:
        with torch.no_grad():
            new = Int8Embedding.from_embedding(emb)
        summary.bytes_before += emb.weight.numel() * emb.weight.element_size()
        summary.bytes_after += new.weight_bytes()
    model.set_submodule(name, new)
    summary.int8.append(name)


def convert(model: nn.Module, format: str = "i2", act: str = "int8",
            granularity: str = "tensor",
            exclude: Optional[Union[Iterable[str], str]] = None,
            filter: Optional[Filter] = None,
            progress: Optional[bool] = None,
            head: str = "dense", embedding: str = "dense",
            fuse: bool = True, fold_norms: bool = True,
            calibration=None) -> Union[ConvertSummary, TernaryLinear]:
    """Replaces ``nn.Linear`` (and HF ``Conv1D``) modules of ``model`` with :class:`TernaryLinear`, in place.

    Args:
        format, act, granularity: see :class:`TernaryLinear`.
        exclude: glob patterns of qualified module names to leave dense. Default
            :data:`DEFAULT_EXCLUDE` (``lm_head``-like output layers). Pass ``()`` to convert all.
        filter: ``filter(name, module) -> bool``; only layers it accepts are converted (applied
            after ``exclude``).
        progress: show a progress bar (default: when there are more than 32 layers).
        head: ``"int8"`` replaces the output head (``model.get_output_embeddings()``, else the
            excluded ``lm_head``-like linear layers) with an :class:`Int8Linear` (int8 weights,
            one scale per row, this ``act``): half of bf16's bytes, for decode speed and memory.
            ``"dense"`` (default) leaves it as it is.
        embedding: ``"int8"`` replaces the input embedding (``model.get_input_embeddings()``)
            with an :class:`Int8Embedding`; ``"dense"`` (default) leaves it. With both at
            ``"int8"``, a head tied to the embedding keeps one set of int8 rows and scales for
            both (saved once, shared again on load and through ``.to()``).
        fuse: fuse sibling projections that read the same input (``q_proj``/``k_proj``/
            ``v_proj`` into ``qkv_proj``, ``gate_proj``/``up_proj`` into ``gate_up_proj``) into
            one ternary layer each, with the same results; the old names become
            :class:`~ternary_ops.fuse.FusedSlice` modules (see
            :func:`ternary_ops.fuse.fuse_projections`). Default True.
        fold_norms: fold each RMSNorm whose output feeds only act="int8" ternary layers (the
            input, post-attention and BitNet sub-layer norms of Llama, Mistral, Qwen2 and BitNet
            models) into those layers' activation quantization: the norm becomes a
            :class:`~ternary_ops.fuse.FoldedRMSNorm` that passes ``x`` through, and the layers
            run ``torch.ops.ternary.rms_norm_linear_*`` (see
            :func:`ternary_ops.fuse.fold_norms`). Results equal RMSNorm then the layer up to
            float rounding. Default True.
        calibration: what each converted layer's relative output error is measured on (see
            :class:`ConvertSummary`): ``None`` (default) random normal inputs; a batch the
            model takes (a tensor, a dict of keyword arguments or a tuple of arguments), run
            once before converting, whose inputs to each layer are kept (a layer it does not
            call gets random inputs); ``False`` measures nothing. Where the median error says
            the weights were not ternary to begin with, a :class:`TernarizationWarning` says so
            once: plain ternarization of a normally trained model loses most of its quality.

    Layers are converted one at a time and each dense weight is released as soon as its
    replacement is in place, so peak memory stays near the model's own size. On Linux the
    packed weights then move to one buffer of 2 MiB pages (:func:`ternary_ops.use_huge_pages`).
    Returns a :class:`ConvertSummary`.

    Only layers the model calls as modules are replaced: the ``out_proj`` of
    ``nn.MultiheadAttention`` (which reads its ``.weight`` directly) stays dense, and the summary
    says so. The inference fast path of an ``nn.TransformerEncoderLayer`` whose ``linear1`` /
    ``linear2`` are converted (it reads their weights directly too) is turned off.

    A layer whose weight is shared with another module (a language-model head tied to the
    input embedding) gets its own ternary weight: it is untied, the other module keeps the
    dense weight, a Hugging Face ``config.tie_word_embeddings`` is set to False so that loading
    does not tie them again, and the summary says so. A ``transformers`` model that uses SDPA
    attention is switched to :data:`ternary_ops.hf.attention.ATTENTION_NAME`, the same attention
    with the backend of one-token queries chosen per device and mode (on CUDA in eager mode
    never cuDNN, which rebuilds its plan on every decode step; compiled over a static cache,
    cuDNN on the grouped K/V heads; on the CPU under ``torch.compile``, math);
    ``model.set_attn_implementation("sdpa")`` undoes it. Layers that are already
    ``TernaryLinear`` are left as they are (a warning and the summary say how many). A
    :class:`~ternary_ops.QATLinear` (:func:`ternary_ops.prepare_qat`) is packed with its own
    format, act and granularity, and its error is measured against its own forward.

    ``model`` may itself be an ``nn.Linear`` (or ``Conv1D``): a layer cannot replace itself in
    place, so ``convert`` then returns a new :class:`TernaryLinear` (``exclude``, ``filter`` and
    ``progress`` do not apply) and leaves the layer as it was:
    ``layer = tops.convert(nn.Linear(64, 32))``.
    """
    dense = dense_weight(model)
    if dense is not None:
        if dense[0].device.type == "meta":
            raise ValueError("convert: the layer's weight is on the meta device; load the "
                             "weights before converting")
        if dense[0].dtype == torch.float64:
            warnings.warn(_float64_warning("layer"), UserWarning, stacklevel=2)
        with torch.no_grad():
            return TernaryLinear.from_dense(dense[0], dense[1], format=format, act=act,
                                            granularity=granularity)
    check_head_and_embedding(head, embedding, "convert")
    if isinstance(exclude, str):
        exclude = (exclude,)
    patterns = tuple(DEFAULT_EXCLUDE if exclude is None else exclude)
    summary = ConvertSummary()
    targets = []
    read_directly = {f"{name}.{child}" if name else child: type(module).__name__
                     for name, module in model.named_modules()
                     if isinstance(module, nn.MultiheadAttention)
                     for child, _ in module.named_children()}
    owners = weight_owners(model)
    already = summary.already_ternary = sum(isinstance(m, TernaryLinear)
                                            for m in model.modules())
    if already:
        warnings.warn(f"convert: {already} layers of the model are already TernaryLinear and "
                      "are left as they are (their format and act do not change)",
                      UserWarning, stacklevel=2)
    for name, module in model.named_modules():
        dense = dense_weight(module)
        if dense is None:
            continue
        if name in read_directly:
            summary.skipped.append(name)
            summary.notes[name] = (f"left dense: {read_directly[name]} reads its weight "
                                   "directly instead of calling it")
        elif _excluded(name, patterns) or (filter is not None and not filter(name, module)):
            summary.skipped.append(name)
        elif dense[0].device.type == "meta":
            raise ValueError(f"convert: layer '{name}' has its weight on the meta device; load "
                             "the weights before converting")
        else:
            targets.append(name)
            shared = [o for o in owners.get(id(dense[0]), []) + owners.get(id(module.weight), [])
                      if o != name]
            if shared:
                summary.notes[name] = (f"untied from '{shared[0]}', which keeps the dense weight")
    if any(dense_weight(model.get_submodule(n))[0].dtype == torch.float64 for n in targets):
        warnings.warn(_float64_warning("model"), UserWarning, stacklevel=2)
    if any(n in summary.notes and n in targets for n in summary.notes):
        untie_config(getattr(model, "config", None))
    if progress is None:
        progress = len(targets) > 32
    names = targets
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(targets, desc="ternary convert", unit="layer")
    captured: Dict[str, torch.Tensor] = {}
    if calibration is not None and calibration is not False:
        captured = _capture_inputs(model, targets, calibration)
        summary.calibration = "calibration batch"
    elif calibration is None:
        summary.calibration = "random inputs"
    gen = torch.Generator().manual_seed(0)
    _turn_off_fast_paths(model, set(targets), summary)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = getattr(parent, child)
        weight, bias = dense_weight(module)
        qat = module if isinstance(module, QATLinear) else None
        with torch.no_grad():
            layer = (qat.to_ternary() if qat is not None else
                     TernaryLinear.from_dense(weight, bias, format=format, act=act,
                                              granularity=granularity))
        summary.bytes_before += weight.numel() * weight.element_size()
        summary.bytes_after += layer.weight_bytes()
        if summary.calibration is not None:
            x = captured.get(name)
            if x is None:
                x = torch.randn(CALIBRATION_ROWS // 2, weight.shape[1], generator=gen)
            summary.errors[name] = _relative_error(qat if qat is not None else weight, layer, x)
        layer.layer_name = name
        setattr(parent, child, layer)
        del weight, bias, module, qat  # the dense weight goes as soon as nothing holds it
        summary.replaced.append(name)
    if fuse and summary.replaced:
        summary.fused = fuse_projections(model)
    if fold_norms and summary.replaced:
        summary.folded = fold_norms_into_layers(model)
    if summary.calibration is not None and not summary.errors:
        summary.calibration = None
    _warn_if_not_ternary(summary)
    quantize_head_and_embedding(model, head, embedding, act, summary)
    if summary.replaced and hasattr(model, "set_attn_implementation"):  # a transformers model
        from .hf.attention import ATTENTION_NAME, use_decode_attention
        if use_decode_attention(model):
            summary.attention = ATTENTION_NAME
    use_huge_pages(model)
    return summary
