"""fusecc: a deep-learning graph compiler for CPUs, GPUs and ARM edge boards.

compiled = torch.compile(model, backend="fusecc", options={...})
compiled = fusecc.compile_exported(torch.export.export(model, args))
print(fusecc.explain(model, *args))
plan = fusecc.calibrate(model, sample_inputs, budget=0.95)   # attention sparsity
"""

from .backend import fusecc_backend
from .errors import FallbackWarning, FuseccError, OptionError, PassError, UnsupportedError
from .explain import explain
from .export import compile_exported
from .graph.fused_group import FusedGroup
from .options import Options
from .sparsity.calibrate import calibrate

__version__ = "0.1.0"

__all__ = [
    "FallbackWarning",
    "FusedGroup",
    "FuseccError",
    "OptionError",
    "Options",
    "PassError",
    "UnsupportedError",
    "calibrate",
    "compile_exported",
    "explain",
    "fusecc_backend",
]
