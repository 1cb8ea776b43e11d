"""The Dynamo backend: ``torch.compile(model, backend="fusecc")``.

Dynamo hands over a Python-level FX graph and real example inputs;
AOTAutograd lowers it to functional ATen graphs (one for inference, or a
forward and a backward for training) and calls fusecc's compiler on each.

A plain inference graph - no input needs a gradient, every input a tensor
of static shape, no input mutated, no output aliasing an input - is lowered
by AOTAutograd's export (`aot_export_joint_simple`) instead, which keeps
Dynamo's calling convention: the compiled graph is then called by Dynamo
directly, without AOTAutograd's runtime wrappers around every call
(MobileNetV2: about 0.1 ms of a cold call, see docs/benchmarks.md). Any
other graph takes the general path.

The backend is registered under the ``torch_dynamo_backends`` entry point,
so ``backend="fusecc"`` works without ``import fusecc``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx import GraphModule

from .capture import DECOMPOSITIONS, FrozenInputs, freeze_placeholders
from .compiler import compile_graph, copy_graph_module, new_graph_name
from .options import Options
from .runtime.compiled_graph import CompiledGraph

log = logging.getLogger("fusecc")


def fusecc_backend(
    gm: GraphModule,
    example_inputs: Sequence[object],
    *,
    options: dict | Options | None = None,
    mode: str | None = None,
):
    """Compile a Dynamo graph with fusecc. ``options`` as in `Options`."""
    opts = Options.resolve(options)
    if mode is not None:
        log.warning("fusecc ignores torch.compile(mode=%r); use options={...} instead", mode)
    dynamo_names = [p.name for p in gm.graph.find_nodes(op="placeholder")]
    # Keep only module state (parameters, buffers) alive, not example activations.
    module_state = [t if _is_module_state(t) else None for t in example_inputs]

    if _plain_inference(gm, example_inputs):
        direct = _compile_inference_directly(gm, example_inputs, opts, dynamo_names)
        if direct is not None:
            return direct

    def compiler_for(kind: str):
        def compile_aot(aot_gm: GraphModule, aot_inputs: Sequence[object]) -> CompiledGraph:
            frozen = _frozen_inputs(aot_inputs, module_state) if kind == "inference" and opts.freeze else None
            return _compiled_graph(aot_gm, kind, "aot_autograd", len(aot_inputs), frozen, opts, dynamo_names)

        return compile_aot

    backend = aot_autograd(
        fw_compiler=compiler_for("forward"),
        bw_compiler=compiler_for("backward"),
        inference_compiler=compiler_for("inference"),
        decompositions=DECOMPOSITIONS,
    )
    return backend(gm, example_inputs)


def _compiled_graph(
    aten: GraphModule,
    kind: str,
    capture: str,
    num_inputs: int,
    frozen: FrozenInputs | None,
    opts: Options,
    names: list[str],
) -> CompiledGraph:
    """``aten`` compiled, its frozen inputs inlined; rebuilt from ``aten``
    when one of them changes."""
    name = new_graph_name(kind)

    def build(values: dict[int, torch.Tensor]) -> GraphModule:
        graph = aten
        if values:  # keep aten pristine: a later rebuild re-freezes it
            graph = freeze_placeholders(copy_graph_module(aten), values, names)
        compiled, _ = compile_graph(
            graph, kind=kind, options=opts, name=name, frozen_constants=len(values), capture=capture
        )
        return compiled

    # Dynamo and AOTAutograd call us with a fake mode active; constant
    # folding computes on real tensors.
    with unset_fake_temporarily():
        return CompiledGraph(build, num_inputs, frozen)


def _plain_inference(gm: GraphModule, example_inputs: Sequence[object]) -> bool:
    """Inference on plain tensors of static shapes (what AOTAutograd's
    export handles without changing the calling convention)."""
    if not all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in example_inputs):
        return False  # SymInt sizes, tensor subclasses, scalars: AOTAutograd's general path
    if torch.is_grad_enabled() and any(t.requires_grad for t in example_inputs):
        return False  # a training graph: forward and backward
    for ph in gm.graph.find_nodes(op="placeholder"):
        value = ph.meta.get("example_value")
        if not isinstance(value, torch.Tensor) or any(isinstance(d, torch.SymInt) for d in value.shape):
            return False
    return True


def _compile_inference_directly(gm: GraphModule, example_inputs: Sequence[object], opts: Options, names: list[str]):
    """The compiled graph as a callable taking Dynamo's inputs, or None
    where AOTAutograd's export refuses the graph (an input mutated, an
    output aliasing an input: the runtime wrappers must handle those)."""
    from torch._functorch.aot_autograd import aot_export_joint_simple

    try:
        aten = aot_export_joint_simple(gm, tuple(example_inputs), trace_joint=False, decompositions=DECOMPOSITIONS)
    except Exception as e:  # noqa: BLE001 - only tracing failed: the general path traces again and reports
        # its documented refusals (RuntimeError: an input mutated, an output
        # aliasing an input) and anything else export-mode tracing cannot take
        log.debug("fusecc: AOTAutograd's runtime wrappers needed: %s", str(e).split(".")[0])
        return None
    frozen = None
    if opts.freeze:
        # no input is mutated or aliased (the export checked): all module state can be inlined
        indices = [i for i, t in enumerate(example_inputs) if _is_module_state(t)]
        frozen = FrozenInputs(indices, example_inputs) if indices else None
    return _compiled_graph(aten, "inference", "aot_export", len(example_inputs), frozen, opts, names).call_positional


def _is_module_state(t: object) -> bool:
    return isinstance(t, torch.nn.Parameter) or (
        isinstance(t, torch.Tensor) and getattr(t, "_dynamo_static_input_type", None) is not None
    )


def _frozen_inputs(aot_inputs: Sequence[object], dynamo_inputs: Sequence[object]) -> FrozenInputs | None:
    """The parameters and buffers among the AOT graph's inputs that can be
    inlined as constants: static (Dynamo says they are module state), not
    mutated and not aliased by an output."""
    ctx = torch._guards.TracingContext.try_get()
    meta = ctx.fw_metadata if ctx is not None else None
    if meta is None or len(aot_inputs) != len(dynamo_inputs):
        # Subclass or duplicated inputs change AOT's input list; stay unfrozen.
        return None
    aliased = {o.base_idx for o in meta.output_info if o.base_idx is not None}
    indices = [
        i
        for i in meta.static_input_indices
        if isinstance(dynamo_inputs[i], torch.Tensor)
        and not meta.input_info[i].mutates_data
        and not meta.input_info[i].mutates_metadata
        and i not in aliased
        and tuple(dynamo_inputs[i].shape) == tuple(aot_inputs[i].shape)
    ]
    return FrozenInputs(indices, dynamo_inputs) if indices else None
