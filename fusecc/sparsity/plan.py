"""An attention sparsity plan: per layer and head, a strategy.

The file is JSON a user can read, edit and reuse::

    {"version": 1, "block": 64, "budget": 0.95,
     "layers": [{"heads": [{"kind": "local", "window": 256, "recall": 0.97, "kept": 0.18}, ...]},
                ...]}

Layers are the model's attention ops in graph order (what
`fusecc.calibrate` saw). ``recall`` (the attention mass the strategy keeps
on the calibration inputs, the worst query block averaged) and ``kept``
(the share of blocks computed) are informational; only ``kind`` and its
sizes change the computation. Loading validates everything and names the
layer and head of any mistake.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from ..errors import OptionError
from .strategies import StrategyError, validate

VERSION = 1
BLOCKS = (16, 32, 64, 128)  # block sizes the kernel runs (multiples of every dialect's key block)


@dataclasses.dataclass
class Plan:
    layers: list[list[dict]]  # [layer][head] -> strategy
    block: int = 64
    budget: float | None = None

    def to_json(self) -> dict:
        return {
            "version": VERSION,
            "block": self.block,
            "budget": self.budget,
            "layers": [{"heads": heads} for heads in self.layers],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(path)  # a reader never sees half a plan
        return path

    @classmethod
    def from_json(cls, data: object, source: str = "plan") -> Plan:
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise OptionError(f"{source}: an attention plan is a dict with a 'layers' list")
        if data.get("version", VERSION) != VERSION:
            raise OptionError(f"{source}: plan version {data.get('version')!r}, this fusecc reads {VERSION}")
        block = data.get("block", 64)
        if block not in BLOCKS:
            raise OptionError(f"{source}: block size {block!r} is not one of {BLOCKS}")
        layers = []
        for i, layer in enumerate(data["layers"]):
            heads = layer.get("heads") if isinstance(layer, dict) else None
            if not isinstance(heads, list) or not heads:
                raise OptionError(f"{source}: layer {i} has no 'heads' list")
            try:
                layers.append([validate(h, f"{source}: layer {i} head {j}") for j, h in enumerate(heads)])
            except StrategyError as e:
                raise OptionError(str(e)) from None
        return cls(layers, block, data.get("budget"))

    @classmethod
    def load(cls, plan: str | Path | dict | Plan) -> Plan:
        """From a path, a parsed dict or a Plan."""
        if isinstance(plan, Plan):
            return plan
        if isinstance(plan, dict):
            return cls.from_json(plan)
        path = Path(plan)
        try:
            data = json.loads(path.read_text())
        except OSError as e:
            raise OptionError(f"attention plan {str(path)!r} cannot be read: {e.strerror}") from None
        except ValueError as e:
            raise OptionError(f"attention plan {str(path)!r} is not JSON: {e}") from None
        return cls.from_json(data, str(path))

    def summary(self) -> str:
        return count_kinds(h for heads in self.layers for h in heads)


def count_kinds(strategies) -> str:
    """'8 local, 4 dense': how many strategies of each kind, most common first."""
    kinds = Counter(h["kind"] for h in strategies)
    return ", ".join(f"{n} {k}" for k, n in kinds.most_common())
