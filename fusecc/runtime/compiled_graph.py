"""The callable handed back to AOTAutograd for one graph."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch.fx import GraphModule

from ..capture import FrozenInputs

log = logging.getLogger("fusecc")


class CompiledGraph:
    """Runs a compiled graph with AOTAutograd's boxed calling convention
    (one list of flat inputs; `call_positional` takes them as arguments). Frozen inputs are dropped from the call; if
    one was replaced or modified in place since compile time, the graph is
    rebuilt from the captured graph with the new values first."""

    def __init__(
        self,
        build: Callable[[dict[int, torch.Tensor]], GraphModule],
        num_inputs: int,
        frozen: FrozenInputs | None = None,
    ):
        # An instance attribute (not a class one) so wrappers that copy
        # __dict__ - Dynamo's disable() around the backward - keep it.
        self._boxed_call = True
        self._build = build
        self.frozen = frozen
        frozen_set = set(frozen.indices) if frozen else set()
        self.keep = [i for i in range(num_inputs) if i not in frozen_set]
        self.gm = build(frozen.values() if frozen else {})
        self.rebuilds = 0

    def __call__(self, args: list) -> tuple:
        inputs = self.runtime_inputs(args)  # first: it may rebuild self.gm
        return self.gm.forward(*inputs)  # not gm(...): nn.Module's call machinery costs 4 us a call

    def call_positional(self, *args) -> tuple:
        """Dynamo's calling convention, for graphs it calls without AOTAutograd."""
        return self(list(args))

    def runtime_inputs(self, args: list) -> list:
        """The graph's inputs from AOTAutograd's: the frozen ones are checked
        (rebuilding first if one changed) and dropped. Consumes ``args``."""
        if self.frozen is not None:
            if not self.frozen.unchanged(args):
                log.warning("fusecc: a frozen parameter or buffer changed since compile time; recompiling")
                self.frozen.refresh(args)
                self.gm = self._build(self.frozen.values())
                self.rebuilds += 1
            inputs = [args[i] for i in self.keep]
        else:
            inputs = list(args)
        args.clear()
        return inputs
