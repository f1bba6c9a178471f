"""Decode-loop helpers: the cache keyword, ``torch.compile`` settings for a decode step, and a
decode step replayed as one CUDA graph."""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, List, Union

import torch


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for passing a KV cache to ``model(...)``: the keyword is ``cache`` in
    the transformers versions that take it and ``past_key_values`` in earlier ones."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def compile_kwargs(device: Union[str, torch.device], module_guards: bool = False,
                   cuda_graphs: bool = True) -> dict:
    """Keyword arguments for ``torch.compile`` of a model's decode step, which are also the
    fields of ``transformers.CompileConfig``: ``fullgraph=True``; on CUDA, unless
    ``cuda_graphs=False``, CUDA graphs (what ``mode="reduce-overhead"`` turns on; turn them off
    when :func:`cuda_graph_step` captures the step); and, unless ``module_guards``, no guards on
    the state of the model's ``nn.Module`` objects
    (``torch.compiler.skip_guard_on_all_nn_modules_unsafe``).

    Every call of a compiled function first checks its guards, and a model of a few hundred
    modules has thousands of guards on their attributes, parameters and buffers. At batch 1
    that check is a large share of a short step (benchmarks/results/e2e.md measures it).

    Without them the compiled step assumes that the model does not change after compiling:
    replacing a layer, a parameter or a buffer, changing an attribute such as ``act``, or
    switching ``train()``/``eval()`` would not compile again, and the old code would run.
    Call ``torch.compiler.reset()`` after such a change, or pass ``module_guards=True``.

    Returns a new dict on every call: ``torch.compile`` takes ``guard_filter_fn`` out of the
    ``options`` it is given, so one dict serves one ``torch.compile`` call.
    """
    device = torch.device(device).type
    options = {}
    if device == "cuda" and cuda_graphs:
        options["triton.cudagraphs"] = True
    if not module_guards:
        skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
        if skip is None:
            warnings.warn(f"compile_kwargs: torch {torch.__version__} cannot skip module guards "
                          "(torch.compiler.skip_guard_on_all_nn_modules_unsafe); keeping them",
                          UserWarning, stacklevel=2)
        else:
            options["guard_filter_fn"] = skip
    return {"fullgraph": True, "mode": None, "options": options or None}


def cache_tensors(cache) -> List[torch.Tensor]:
    """Every tensor a ``transformers`` cache holds per layer: keys, values and any position
    counters (a ``StaticCache`` advances its own write position on every call, whatever
    ``cache_position`` says). What :func:`cuda_graph_step`'s ``state`` needs for a decode step."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"cache_tensors: expected a transformers cache with per-layer state "
                         f"(.layers), got {type(cache).__name__}")
    return [t for layer in layers for t in vars(layer).values() if isinstance(t, torch.Tensor)]


def cuda_graph_step(fn: Callable, *example_inputs: torch.Tensor, warmup: int = 2,
                    state: Iterable[torch.Tensor] = ()) -> Callable:
    """``fn`` captured in one CUDA graph: returns ``step(*inputs)``, which copies ``inputs``
    into the graph's own input tensors, replays the graph and returns its outputs.

    This is the lightest way to run a decode step on CUDA: a replay costs one graph launch and
    the input copies, with none of the per-call host work of a compiled function (guards,
    ``mode="reduce-overhead"``'s bookkeeping of its graphs), which at batch 1 is a large share
    of a short step. ``fn`` is typically ``torch.compile(f, **compile_kwargs("cuda",
    cuda_graphs=False))`` of a step that reads a static KV cache at ``cache_position``.

    * ``example_inputs`` (CUDA tensors) give the inputs' shapes, dtypes and devices; each call's
      ``inputs`` must match them. ``fn`` runs on them ``warmup`` times before the capture
      (compiling it, if it is compiled).
    * ``state``: the tensors ``fn`` changes in place, such as a KV cache and its write position
      (:func:`cache_tensors`). They are copied before the warm-up and put back after it, so the
      warm-up leaves no trace (a copy of them is held meanwhile).
    * The returned tensors are the graph's own outputs, overwritten by the next call: clone what
      you keep.
    * The graph replays exactly what ``fn`` did at capture: the same kernels on the same
      memory. ``fn`` must not synchronize with the host or branch on tensor values, and nothing
      it reads may be replaced or reallocated afterwards (the model's weights, the cache).
      After such a change, capture again.
    """
    if warmup < 1:
        raise ValueError(f"cuda_graph_step: warmup must be at least 1 (the first call compiles "
                         f"and allocates outside the graph), got {warmup}")
    state = list(state)
    for i, t in enumerate(state):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"cuda_graph_step: state {i} must be a tensor, got "
                             f"{type(t).__name__}")
    if not example_inputs:
        raise ValueError("cuda_graph_step: expected at least one example input tensor, got none")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor) or t.device.type != "cuda":
            got = t.device if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"cuda_graph_step: example input {i} must be a CUDA tensor, "
                             f"got {got}")
    static = [t.clone() for t in example_inputs]
    saved = [t.clone() for t in state]
    stream = torch.cuda.current_stream(static[0].device)
    side = torch.cuda.Stream(device=static[0].device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):  # warm-up off the capturing stream, as CUDA graphs require
        for _ in range(warmup):
            fn(*static)
    stream.wait_stream(side)
    with torch.inference_mode():  # the cache's tensors may be inference tensors
        for t, s in zip(state, saved):
            t.copy_(s)
    del saved
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn(*static)

    def step(*inputs: torch.Tensor):
        if len(inputs) != len(static):
            raise ValueError(f"cuda_graph_step: expected {len(static)} inputs, got {len(inputs)}")
        for i, (dst, src) in enumerate(zip(static, inputs)):
            if src.shape != dst.shape or src.dtype != dst.dtype or src.device != dst.device:
                raise ValueError(
                    f"cuda_graph_step: input {i} must match the captured one: expected "
                    f"{tuple(dst.shape)} {dst.dtype} on {dst.device}, got {tuple(src.shape)} "
                    f"{src.dtype} on {src.device}")
            dst.copy_(src)
        graph.replay()
        return outputs

    step.graph = graph
    return step
