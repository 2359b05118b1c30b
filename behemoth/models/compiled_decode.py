"""One decode step compiled by torch.compile (inductor), for batch-1 generation on a CPU.

Why: a batch-1 token runs ~50 small matmuls. Eagerly, PyTorch spends a third of an int8 GPT-2-small token on
dispatch and small ops (layer norms, GELU, residual adds, casts), and aten's `_weight_int8pack_mm` reads its
weights at about half the copy bandwidth. Inductor with `freezing` (the weights become constants of the
graph) and `max_autotune` benchmarks its own C++ GEMM templates (AVX-512, weight-only int8 and int4 among
them) against aten's kernel per matrix shape, keeps the faster, and fuses the small ops: bench/generate.py
measures the gain. The step needs fixed shapes, so it runs over a StaticKVCache (models/kv_cache.py) for
behemoth's GPT, and over transformers' StaticCache for a Hugging Face causal LM (its `generate` with
`cache_implementation="static"` calls the compiled forward for each one-token step; the prompt's prefill
stays eager, so prompts of any length share the step's graph).

Compiling costs seconds to a minute per model on 2 cores (more for big ones), so it is opt-in
(`behemoth generate --compile`). The weights are read when a model's step is first compiled (they are
constants of the graph) and the step does not check the model again: compile a model whose weights, dtype
and modules are final, as generation does.
"""

import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# inductor's settings for the step: the weights are frozen into the graph; every matmul's kernel is chosen
# by timing the candidates on this machine, quietly (inductor prints its timing tables otherwise, into the
# text being generated); the graph's calls are made from generated C++, not Python: a GPT-2-small int4
# token spent 1.36 ms outside its matmuls with the Python wrapper and 1.12 ms with this one, and decoded at
# 260 tok/s against 245 (2-core EPYC, 5 interleaved rounds), for ~15 s more compiling (26 s -> 41 s)
INDUCTOR_OPTIONS = {
    "freezing": True,
    "max_autotune": True,
    "cpp_wrapper": True,
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}

_compiled: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def compiled_decode(model: Any) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """`model.decode(ids, static_cache)` compiled for `model` (a GPT), made once per model and kept while the
    model lives. The model is an argument of the compiled function, not captured, so the cache does not keep
    it alive."""
    step = _step_for(model, type(model).decode)
    return lambda ids, cache: step(model, ids, cache)


def _step_for(owner: Any, function: Callable) -> Callable:
    """`function` (an unbound method of `owner`'s class) compiled once for `owner`, kept while it lives."""
    step = _compiled.get(owner)
    if step is None:
        step = _compiled[owner] = _compile(function)
    return step


def _compile(function: Callable) -> Callable:
    """`function` compiled: fullgraph (a graph break would quietly lose the speed), dynamic=None (a second
    cache size or batch recompiles once with those sizes symbolic, not once per size). The inductor
    settings are applied around each call, where compiling happens: given as torch.compile's `options`,
    freezing is not applied (measured on an int8 GPT-2-small: 92 tok/s against 187)."""
    import torch._inductor.config as inductor_config  # loads inductor: only when compiling is asked for

    # No guards on the model's modules: checking them (~300 for GPT-2-small, an identity check per
    # parameter among them) cost 0.2 ms per token. Each model gets its own compiled step (_step_for) over its
    # own copy of the function's code, and dynamo keeps graphs per code object, so without those guards no
    # other model's graph (its weights frozen in) can match: one test compiles two same-shaped models.
    skip_module_guards = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
    compiled = torch.compile(_own_code(function), fullgraph=True, dynamic=None, options=skip_module_guards)

    def run(*args: Any, **kwargs: Any) -> Any:
        with inductor_config.patch(INDUCTOR_OPTIONS):
            return compiled(*args, **kwargs)

    return run


def _own_code(function: Callable) -> Callable:
    """`function` over a copy of its code object (the same globals, defaults and closure)."""
    copy = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__qualname__ = function.__qualname__
    copy.__dict__.update(function.__dict__)
    return copy


@contextmanager
def compiled_hf_forward(hf: Any) -> Iterator[None]:
    """Within the block, `hf` (a transformers model) runs its one-token forward passes compiled (made once
    per model); other calls (the prompt's prefill) stay eager."""
    step, eager = _step_for(hf, type(hf).forward), type(hf).forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or ids.dim() != 2 or ids.size(1) != 1:
            return eager(hf, *args, **kwargs)
        _unmark_static(kwargs.get("cache", kwargs.get("past_key_values")))  # transformers 5 names it cache
        with _step_attention():
            return step(hf, *args, **kwargs)

    hf.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's
    try:
        yield
    finally:
        del hf.forward


def _step_attention() -> Any:
    """torch's math attention for the one-token step: scaled_dot_product_attention's two matmuls and softmax,
    which inductor fuses into the step's graph, with the model's own mask. Otherwise the graph calls torch's
    flash-attention CPU kernel, ~180 us a layer for one query over a short cache: 4 ms of a 54 ms Llama-1B
    int8 token on 2 cores (torch.profiler). The eager prefill keeps flash attention, which pays off on long
    prompts."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _unmark_static(cache: Any) -> None:
    """Make transformers' StaticCache tensors ordinary graph inputs. It marks them as static addresses (for
    CUDA graphs), and freezing folds static inputs into the graph like weights: the next `generate`, with a
    new cache, would then read the first one's tensors (measured: stale fill counts, out-of-range writes)."""
    for layer in getattr(cache, "layers", ()):
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor) and hasattr(value, "_dynamo_static_input_type"):
                del value._dynamo_static_input_type
