"""Saving and loading ternary models with safetensors.

The file is a plain safetensors file: the state dict's tensors (weights stay packed) plus one
metadata entry, ``"ternary_ops"``, a JSON object recording each ternary layer's format, act and
shapes, so a load can rebuild the layers and refuse files that do not fit.

:func:`read_tensors` and :func:`read_metadata` are the package's safetensors readers (also for
the Hugging Face checkpoints :mod:`ternary_ops.hf` loads).
"""
from __future__ import annotations

import json
import os
import secrets
import stat
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .formats import FORMATS, INT64_MAX, packed_rows, validate_q8, validate_weight
from .fuse import FoldedRMSNorm, fold_norm, fused_members, install_fused
from .memory import use_huge_pages
from .nn import Int8Embedding, Int8Linear, TernaryLinear
from .reference import ACT_MODES

METADATA_KEY = "ternary_ops"
FORMAT_VERSION = 1


# Layers kept at 8 bits, recorded next to the ternary ones: "q8" an Int8Linear, "q8_embedding" an
# Int8Embedding (in_features = embedding_dim, out_features = num_embeddings).
Q8_FORMATS = ("q8", "q8_embedding")


def _layer_info(model: nn.Module) -> Dict[str, dict]:
    info = {}
    for name, m in model.named_modules():
        if isinstance(m, (TernaryLinear, Int8Linear)):
            info[name] = {"format": getattr(m, "format", "q8"), "act": m.act,
                          "in_features": m.in_features, "out_features": m.out_features,
                          "bias": m.bias is not None}
            parent_name, _, child = name.rpartition(".")
            members = fused_members(model.get_submodule(parent_name), child) if child else []
            if members:
                info[name]["fuses"] = [list(member) for member in members]
            if getattr(m, "input_norm", None) is not None:
                info[name]["input_norm"] = m.input_norm.norm_name
        elif isinstance(m, Int8Embedding):
            info[name] = {"format": "q8_embedding", "act": "none", "in_features": m.embedding_dim,
                          "out_features": m.num_embeddings, "bias": False,
                          "dtype": str(m.dtype).replace("torch.", ""),
                          "padding_idx": m.padding_idx}
    return info


def build_layer(spec: dict, device=None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """The (zero-filled) module a checked layer spec of the metadata describes."""
    n, k, fmt = spec["out_features"], spec["in_features"], spec["format"]
    if fmt == "q8":
        return Int8Linear(k, n, bias=spec.get("bias", False), act=spec["act"], device=device,
                          dtype=dtype)
    if fmt == "q8_embedding":
        if dtype is None:
            dtype = getattr(torch, str(spec.get("dtype", "float32")), None)
            if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
                raise ValueError(f"embedding spec has a bad dtype {spec.get('dtype')!r}")
        return Int8Embedding(n, k, spec.get("padding_idx"), device=device, dtype=dtype)
    return TernaryLinear(k, n, bias=spec.get("bias", False), format=fmt, act=spec["act"],
                         device=device, dtype=dtype)


def _spec_matches(module: nn.Module, spec: dict) -> bool:
    fmt = spec["format"]
    if fmt == "q8":
        return isinstance(module, Int8Linear)
    if fmt == "q8_embedding":
        return isinstance(module, Int8Embedding)
    return isinstance(module, TernaryLinear)


def _is_path(p) -> bool:
    return isinstance(p, (str, os.PathLike))


def save(model_or_state: Union[nn.Module, Dict[str, torch.Tensor]], path: Union[str, os.PathLike],
         layers: Optional[Dict[str, dict]] = None, metadata: Optional[Dict[str, str]] = None) -> None:
    """Saves a model (or a state dict) to ``path`` in safetensors format.

    For a module, each ``TernaryLinear``'s format, act and shapes go into the file's metadata.
    For a plain state dict, pass ``layers`` (``{prefix: {"format", "act", "in_features",
    "out_features", "bias"}}``) to record them; without it the file holds tensors only.
    Tensors that share storage (tied weights) are stored once and restored as aliases.
    ``save(path, model)`` is accepted too.

    The write is atomic: the file is written to a temporary file in the same directory, synced,
    then renamed over ``path``, so a failed or interrupted save leaves any previous file intact.
    The new file gets the mode the process's umask gives.
    """
    if _is_path(model_or_state) and isinstance(path, (nn.Module, dict)):
        model_or_state, path = path, model_or_state
    if not _is_path(path):
        raise TypeError(f"save(model_or_state, path): path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    if not isinstance(model_or_state, (nn.Module, dict)):
        raise TypeError(f"save(model_or_state, path): model_or_state must be an nn.Module or a "
                        f"state dict, got {type(model_or_state).__name__}")
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
        layers = _layer_info(model_or_state) if layers is None else layers
    else:
        state = dict(model_or_state)
    tensors, aliases, seen = {}, {}, {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save: state entry '{name}' is a {type(t).__name__}, not a tensor")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    meta = dict(metadata or {})
    meta[METADATA_KEY] = json.dumps({"version": FORMAT_VERSION, "layers": layers or {},
                                     "aliases": aliases}, sort_keys=True)
    write_atomic(os.fspath(path), lambda tmp: _save_file(tensors, tmp, meta))


def _share_aliased_buffers(model: nn.Module, aliases: Dict[str, str]) -> None:
    """Buffers the file stored once because they were one tensor when saved (the int8 rows of
    a tied head and embedding) become one tensor again; ``load_state_dict`` copied them apart."""
    for alias, target in aliases.items():
        owners = []
        for key in (alias, target):
            prefix, _, name = key.rpartition(".")
            try:
                module = model.get_submodule(prefix)
            except AttributeError:
                break
            if module._buffers.get(name) is None:
                break
            owners.append((module, name))
        if len(owners) == 2:
            (module, name), (source, source_name) = owners
            shared, mine = source._buffers[source_name], module._buffers[name]
            if (shared.shape, shared.dtype, shared.device) == (mine.shape, mine.dtype,
                                                               mine.device):
                module._buffers[name] = shared


def _save_file(tensors, path, metadata):
    from safetensors.torch import save_file
    save_file(tensors, path, metadata=metadata)


def _create_temp(directory: str, name: str) -> Tuple[str, int]:
    """Creates ``directory/.<name>.tmp-XXXXXXXX`` as a new file with mode 0o666, which the
    kernel reduces by the umask (and any default ACL) as for any new file; returns its path and
    that mode. The umask is never read with ``os.umask``, which sets it process-wide."""
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise FileExistsError(f"{directory}: no free temporary name .{name}.tmp-XXXXXXXX")


def write_atomic(path: str, write) -> None:
    """Calls ``write(tmp)`` for a temporary path beside ``path`` (``.<name>.tmp-XXXXXXXX``),
    syncs it, gives it the mode a new file gets (the umask applied to 0o666), and renames it
    over ``path``. On any failure the temporary file is removed and ``path`` is left as it was
    (a process killed midway leaves the temporary file behind, never a partial ``path``).
    ``write`` may replace the temporary file rather than write into it (recent safetensors
    versions write a temporary file of their own, mode 0600, and rename it)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: directory {directory} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory; save takes a file path")
    tmp, mode = _create_temp(directory, os.path.basename(path))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) != mode:
                os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself survives a crash once the directory entry is synced
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


_Path = Union[str, os.PathLike]


def _safe_open(path: _Path):
    """safetensors' reader on ``path``; a file that is not safetensors raises a ValueError
    naming it."""
    from safetensors import safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, not a safetensors file (a folder "
                                "written by ternary_ops.hf.save_pretrained loads with "
                                "ternary_ops.hf.load_pretrained)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors' own error type differs across its versions
        raise ValueError(f"{path}: not a safetensors file, or a damaged one ({e})") from None


def read_metadata(path: _Path) -> Dict[str, str]:
    """The metadata of a safetensors file (its header only: no tensor data is read)."""
    with _safe_open(path) as f:
        return dict(f.metadata() or {})


def read_tensors(paths: Union[_Path, Sequence[_Path]]) -> Dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, or of several (the shards of one checkpoint), on the
    CPU, by name."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    tensors = {}
    for path in paths:
        with _safe_open(path) as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def _read(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """The tensors of a file written by :func:`save` (aliases restored) and its checked
    ``METADATA_KEY`` entry."""
    raw = read_metadata(path).get(METADATA_KEY)
    tensors = read_tensors(path)
    if raw is None:
        return tensors, {"version": FORMAT_VERSION, "layers": {}, "aliases": {}}
    try:
        info = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt '{METADATA_KEY}' metadata ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: malformed '{METADATA_KEY}' metadata: must be a JSON object, "
                         f"got {type(info).__name__}")
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported '{METADATA_KEY}' metadata version "
                         f"{info.get('version')!r}; expected {FORMAT_VERSION}")
    for key, kind in (("layers", dict), ("aliases", dict)):
        if not isinstance(info.get(key, {}), kind):
            raise ValueError(f"{path}: malformed '{METADATA_KEY}' metadata: '{key}' must be a "
                             f"JSON object, got {type(info[key]).__name__}")
    for prefix, spec in info.get("layers", {}).items():
        if not isinstance(spec, dict):
            raise ValueError(f"{path}: malformed '{METADATA_KEY}' metadata: layer '{prefix}' "
                             f"must be a JSON object, got {type(spec).__name__}")
    for alias, target in info.get("aliases", {}).items():
        if not isinstance(target, str):
            raise ValueError(f"{path}: malformed '{METADATA_KEY}' metadata: alias '{alias}' "
                             f"must name a tensor, got {target!r}")
        if target not in tensors:
            raise ValueError(f"{path}: alias '{alias}' points at missing tensor '{target}'")
        tensors[alias] = tensors[target]
    return tensors, info


def _check_layer(path, prefix: str, spec: dict, tensors: Dict[str, torch.Tensor]) -> None:
    where = f"{path}: layer '{prefix}'"
    fmt, act = spec.get("format"), spec.get("act")
    if fmt not in FORMATS + Q8_FORMATS:
        raise ValueError(f"{where}: unknown format {fmt!r}; expected one of "
                         f"{FORMATS + Q8_FORMATS}")
    if act not in ACT_MODES:
        raise ValueError(f"{where}: unknown act {act!r}; expected one of {ACT_MODES}")
    n, k = spec.get("out_features"), spec.get("in_features")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= INT64_MAX
               for v in (n, k)):
        raise ValueError(f"{where}: bad shapes in metadata: in_features={k!r}, out_features={n!r}")
    _check_fuses(where, spec, n)
    norm = spec.get("input_norm")
    if norm is not None and not (fmt in FORMATS and act == "int8" and isinstance(norm, str)
                                 and norm):
        raise ValueError(f"{where}: malformed 'input_norm' in metadata: expected the name of "
                         f"the RMSNorm folded into an act='int8' ternary layer, got {norm!r}")
    dot = prefix + "." if prefix else ""
    for key in ("weight", "weight_scale") + (("bias",) if spec.get("bias") else ()):
        if dot + key not in tensors:
            raise ValueError(f"{where}: tensor '{dot + key}' is missing")
    w, s = tensors[dot + "weight"], tensors[dot + "weight_scale"]
    expect = (packed_rows(n), k) if fmt == "i2" else (n, k)
    wdtype = torch.uint8 if fmt == "i2" else torch.int8
    if w.dtype != wdtype or tuple(w.shape) != expect:
        raise ValueError(f"{where}: weight must be {wdtype} {list(expect)} for format {fmt}, "
                         f"in_features={k}, out_features={n}; got {w.dtype} {list(w.shape)}")
    if fmt in Q8_FORMATS:
        if not s.is_floating_point() or tuple(s.shape) != (n,):
            raise ValueError(f"{where}: weight_scale must be a float [{n}], got {s.dtype} "
                             f"{list(s.shape)}")
    elif not s.is_floating_point() or not (s.numel() == 1 or tuple(s.shape) == (n,)):
        raise ValueError(f"{where}: weight_scale must be a float scalar or [{n}], got "
                         f"{s.dtype} {list(s.shape)}")
    if spec.get("bias") and tuple(tensors[dot + "bias"].shape) != (n,):
        raise ValueError(f"{where}: bias must have shape [{n}], got "
                         f"{list(tensors[dot + 'bias'].shape)}")
    try:
        if fmt in Q8_FORMATS:
            validate_q8(w)
            if fmt == "q8_embedding":
                build_layer(spec, device="meta")  # checks the recorded dtype
        else:
            validate_weight(w, fmt, n)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _check_fuses(where: str, spec: dict, out_features: int) -> None:
    """A fused layer's ``"fuses"``: ``[[member name, rows], ...]`` covering its rows."""
    fuses = spec.get("fuses")
    if fuses is None:
        return
    well_formed = spec.get("format") in FORMATS and isinstance(fuses, list) and len(fuses) >= 2
    if not well_formed or not all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], str) and f[0].isidentifier()
            and isinstance(f[1], int) and not isinstance(f[1], bool) and f[1] >= 1
            for f in fuses):
        raise ValueError(f"{where}: malformed 'fuses' in metadata: expected a ternary layer's "
                         f"[[member name, rows], ...] with at least 2 members, got {fuses!r}")
    names = [f[0] for f in fuses]
    if len(set(names)) != len(names) or sum(f[1] for f in fuses) != out_features:
        raise ValueError(f"{where}: 'fuses' members {fuses!r} must have distinct names and rows "
                         f"adding up to out_features={out_features}")


def fuse_into(model: nn.Module, prefix: str, spec: dict, where: str, device=None,
              dtype: Optional[torch.dtype] = None) -> None:
    """Puts the (zero-filled) fused layer of ``spec`` at ``prefix`` and replaces its members,
    which must be linear layers of ``model`` with the recorded widths (dense ones, as a model
    is built, or ternary ones), by their slices of it."""
    parent_name, _, fused_name = prefix.rpartition(".")
    parent = model.get_submodule(parent_name)
    for name, rows in spec["fuses"]:
        member = getattr(parent, name, None)
        shape = None
        if isinstance(member, (nn.Linear, TernaryLinear)):
            shape = (member.in_features, member.out_features)
        elif member is not None:
            from .convert import dense_weight
            dense = dense_weight(member)
            if dense is not None:
                shape = tuple(dense[0].shape[::-1])
        if shape is None:
            raise ValueError(f"{where}: fuses '{name}', which is "
                             f"{'missing' if member is None else 'a ' + type(member).__name__} "
                             "in the model, not a linear layer")
        if shape != (spec["in_features"], rows):
            raise ValueError(f"{where}: member '{name}' is {spec['in_features']} -> {rows} in the "
                             f"file but {shape[0]} -> {shape[1]} in the model")
    fused = build_layer({k: v for k, v in spec.items() if k != "fuses"}, device=device,
                        dtype=dtype)
    fused.layer_name = prefix
    install_fused(parent, fused_name, [tuple(f) for f in spec["fuses"]], fused)


def fold_recorded_norms(model: nn.Module, layers: Dict[str, dict], where: str) -> None:
    """Folds each norm the metadata records (a layer's ``"input_norm"``) into its layers again,
    as :func:`ternary_ops.fuse.fold_norms` had; norms already folded that way are left."""
    by_norm: Dict[str, List[str]] = {}
    for prefix, spec in layers.items():
        if spec.get("input_norm") is not None:
            by_norm.setdefault(spec["input_norm"], []).append(prefix)
    for norm_name, prefixes in by_norm.items():
        try:
            norm = model.get_submodule(norm_name)
        except AttributeError:
            raise ValueError(f"{where}: the norm '{norm_name}' folded into {prefixes} does not "
                             "exist in the model") from None
        if isinstance(norm, FoldedRMSNorm) and set(norm.into) == set(prefixes):
            continue
        try:
            fold_norm(model, norm_name, prefixes)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def load(path: Union[str, os.PathLike], model: Optional[nn.Module] = None, strict: bool = True,
         device: Optional[Union[str, torch.device]] = None):
    """Loads a file written by :func:`save`.

    Every ternary layer recorded in the metadata is checked (known format and act, weight
    dtype and shape, scale and bias shapes, valid codes) before anything is returned.

    * ``model=None``: returns the state dict (tensors on ``device``, default CPU).
    * ``model`` given: each recorded layer that is still a dense linear layer in ``model``
      (``nn.Linear``, or the ``Conv1D`` of GPT-2-style Hugging Face models: every layer type
      :func:`ternary_ops.convert` replaces) is replaced by a ``TernaryLinear`` of the recorded
      format and act, then the state dict is loaded (``strict`` as in ``load_state_dict``; with
      ``strict=False`` a warning says when the file matched nothing in the model). Returns
      ``model``. ``load(model, path)`` is accepted too.
    """
    if isinstance(path, nn.Module) and model is None:
        raise TypeError(f"load(path, model): got a {type(path).__name__} as path and no model; "
                        "pass the file's path first")
    if isinstance(path, nn.Module) and _is_path(model):
        path, model = model, path
    if not _is_path(path):
        raise TypeError(f"load(path, model): path must be a str or os.PathLike, got "
                        f"{type(path).__name__}")
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"load(path, model): model must be an nn.Module, got "
                        f"{type(model).__name__}")
    from .convert import dense_weight, untie_config, weight_owners

    tensors, info = _read(path)
    layers = info.get("layers", {})
    for prefix, spec in layers.items():
        _check_layer(path, prefix, spec, tensors)
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}
    if model is None:
        return tensors
    owners = weight_owners(model)
    for prefix, spec in layers.items():
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            if "fuses" in spec:
                try:
                    parent = model.get_submodule(prefix.rpartition(".")[0])
                except AttributeError:
                    parent = None
                member = getattr(parent, spec["fuses"][0][0], None)
                weight = getattr(member, "weight", None)
                if isinstance(weight, torch.Tensor):
                    bias = getattr(member, "bias", None)
                    dtype = (weight.dtype if weight.is_floating_point()
                             else bias.dtype if isinstance(bias, torch.Tensor) else None)
                    fuse_into(model, prefix, spec, f"{path}: layer '{prefix}'",
                              device=weight.device, dtype=dtype)
                    continue
            if strict:
                raise ValueError(f"{path}: layer '{prefix}' does not exist in the model") from None
            continue
        if _spec_matches(module, spec):
            module.layer_name = prefix
            if (module.in_features, module.out_features) != (spec["in_features"],
                                                             spec["out_features"]):
                raise ValueError(f"{path}: layer '{prefix}' is {spec['in_features']} -> "
                                 f"{spec['out_features']} in the file but {module.in_features} "
                                 f"-> {module.out_features} in the model")
            fmt, act = getattr(module, "format", spec["format"]), getattr(module, "act",
                                                                           spec["act"])
            if fmt != spec["format"] or act != spec["act"]:
                raise ValueError(f"{path}: layer '{prefix}' is format={spec['format']}, "
                                 f"act={spec['act']} in the file but format={fmt}, act={act} "
                                 "in the model")
            continue
        if spec["format"] == "q8_embedding":
            if not isinstance(module, nn.Embedding) or tuple(module.weight.shape) != (
                    spec["out_features"], spec["in_features"]):
                raise ValueError(f"{path}: layer '{prefix}' is an int8 embedding "
                                 f"[{spec['out_features']}, {spec['in_features']}] in the file "
                                 f"but a {type(module).__name__} in the model")
            new = build_layer(spec, device=module.weight.device, dtype=module.weight.dtype)
            new.layer_name = prefix
            model.set_submodule(prefix, new)
            continue
        dense = dense_weight(module)
        if dense is None:
            raise ValueError(f"{path}: layer '{prefix}' is a ternary layer in the file but a "
                             f"{type(module).__name__} in the model")
        out_features, in_features = dense[0].shape
        if (in_features, out_features) != (spec["in_features"], spec["out_features"]):
            raise ValueError(f"{path}: layer '{prefix}' is {spec['in_features']} -> "
                             f"{spec['out_features']} in the file but {in_features} -> "
                             f"{out_features} in the model")
        new = build_layer(spec, device=dense[0].device, dtype=dense[0].dtype)
        new.layer_name = prefix
        if len(owners.get(id(module.weight), ())) > 1:  # a tied head gets its own weight,
            untie_config(getattr(model, "config", None))  # as convert does
        parent_name, _, child = prefix.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    fold_recorded_norms(model, layers, os.fspath(path))
    result = model.load_state_dict(tensors, strict=strict)
    _share_aliased_buffers(model, info.get("aliases", {}))
    use_huge_pages(model)
    if not strict and len(result.unexpected_keys) == len(tensors):
        warnings.warn(f"load: nothing in {os.fspath(path)} matched a parameter or buffer of the "
                      f"{type(model).__name__} ({len(tensors)} tensors, all unexpected)",
                      UserWarning, stacklevel=2)
    return model
