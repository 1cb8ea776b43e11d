"""The torch.export entry: ``fusecc.compile_exported(ep, options)``.

Takes an `ExportedProgram` (inference), lowers it to the same functional
ATen level the Dynamo path produces, freezes its parameters, buffers and
constants, and compiles it. The result is called like the original module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from .capture import export_decompositions, freeze_placeholders
from .compiler import compile_graph
from .errors import UnsupportedError
from .options import Options
from .report import GraphReport

_STATE_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


class CompiledExport:
    """Calls a compiled exported program with the module's own signature."""

    def __init__(self, gm: torch.fx.GraphModule, report: GraphReport, ep: ExportedProgram, user_inputs: list, state):
        self.gm = gm
        self.report = report
        self._in_spec = ep.call_spec.in_spec
        self._out_spec = ep.call_spec.out_spec
        self._input_vals = [n.meta.get("val") for n in user_inputs]
        self._input_names = [n.name for n in user_inputs]
        self._state = state  # (position, tensor) of unfrozen module state
        # exported with positional tensors only: a call passing just those
        # skips the pytree walk and spec comparison (about 30 us a call)
        plain = pytree.tree_flatten((tuple(range(len(user_inputs))), {}))[1]
        self._positional = len(user_inputs) if self._in_spec == plain else -1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and len(args) == self._positional and all(isinstance(a, torch.Tensor) for a in args):
            flat = list(args)
        else:
            flat, spec = pytree.tree_flatten((args, kwargs))
            if self._in_spec is not None and spec != self._in_spec:
                raise TypeError(f"compiled program expects inputs structured as {self._in_spec}, got {spec}")
        for name, value, fake in zip(self._input_names, flat, self._input_vals):
            _check_static_shape(name, value, fake)
        for position, tensor in self._state:
            flat.insert(position, tensor)
        out = self.gm.forward(*flat)  # not gm(...): nn.Module's call machinery costs 4 us a call, and no hooks are set
        return pytree.tree_unflatten(list(out), self._out_spec)


def _check_static_shape(name: str, value: object, fake: object) -> None:
    if not isinstance(fake, torch.Tensor) or not isinstance(value, torch.Tensor):
        return
    if value.dim() != fake.dim():
        raise ValueError(f"input {name!r} has {value.dim()} dims; the program was exported with {fake.dim()}")
    for dim, (got, want) in enumerate(zip(value.shape, fake.shape)):
        if isinstance(want, int) and got != want:
            raise ValueError(
                f"input {name!r} has size {got} in dim {dim}; the program was exported for a static {want} "
                "(export with dynamic_shapes=... to accept other sizes)"
            )
    if value.dtype != fake.dtype:
        raise ValueError(f"input {name!r} is {value.dtype}; the program was exported for {fake.dtype}")


def split_inputs(ep: ExportedProgram) -> tuple[dict[int, torch.Tensor], list]:
    """An exported program's (already decomposed) inputs: the module state
    by placeholder index, and the user inputs' placeholders."""
    state_values: dict[int, torch.Tensor] = {}
    user_inputs = []
    placeholders = ep.graph_module.graph.find_nodes(op="placeholder")
    for i, (spec, node) in enumerate(zip(ep.graph_signature.input_specs, placeholders)):
        if spec.kind in _STATE_KINDS:
            # non-persistent buffers and constant tensors live in ep.constants
            state_values[i] = ep.state_dict.get(spec.target, ep.constants.get(spec.target))
        elif spec.kind is InputKind.USER_INPUT:
            user_inputs.append(node)
        else:
            raise UnsupportedError(f"exported input {spec.arg.name} of kind {spec.kind.name} is not supported")
    return state_values, user_inputs


def compile_exported(ep: ExportedProgram, options: Options | Mapping[str, Any] | None = None) -> CompiledExport:
    """Compile an inference `torch.export.ExportedProgram` with fusecc."""
    if not isinstance(ep, ExportedProgram):
        raise TypeError(f"compile_exported takes a torch.export.ExportedProgram, got {type(ep).__name__}")
    opts = Options.resolve(options)
    ep = ep.run_decompositions(export_decompositions())
    sig = ep.graph_signature
    mutations = [o.target for o in sig.output_specs if o.kind is not OutputKind.USER_OUTPUT]
    if mutations:
        raise UnsupportedError(
            f"exported program mutates {', '.join(map(str, mutations))}; compile_exported supports "
            "inference programs without state mutation (export the module in eval mode)"
        )
    gm = ep.graph_module
    placeholders = gm.graph.find_nodes(op="placeholder")
    state_values, user_inputs = split_inputs(ep)
    names = [spec.target or node.name for spec, node in zip(sig.input_specs, placeholders)]
    if opts.freeze:
        gm = freeze_placeholders(gm, state_values, names)
        state: list = []
    else:
        state = sorted(state_values.items())
    compiled, report = compile_graph(
        gm,
        kind="export",
        options=opts,
        frozen_constants=len(state_values) if opts.freeze else 0,
        capture="torch.export",
    )
    return CompiledExport(compiled, report, ep, user_inputs, state)
