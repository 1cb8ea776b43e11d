"""IR dumps: what every stage saw and did, one directory per compiled graph.

Layout of ``<dump_dir>/<graph name>/``::

    00_captured.py          the graph as captured (frozen constants inlined)
    NN_<pass>.py            the graph after each pass that changed it
    NN_<pass>.diff          unified diff of that pass's change
    groups.txt              every fused group with its member ops and body
    final.py                the graph that runs (groups lowered or inlined)
    kernels/<group>.c       every generated kernel's source; summary.json
                            records its compile command, time, cache hit,
                            parameters and KernelSpec
    summary.json            the GraphReport: passes, timings, groups,
                            fallbacks, decisions

``fusecc inspect <dump_dir>`` reads these back into a readable report.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from torch.fx import GraphModule

from .graph.fused_group import groups
from .passes.manager import PassContext
from .report import GraphReport, PassRecord


def readable(gm: GraphModule) -> str:
    """Python source of ``gm`` with shapes and dtypes, nested groups included."""
    return gm.print_readable(print_output=False, include_stride=False, include_device=False)


def _reserve_dir(root: Path, name: str) -> Path:
    """Create ``root/name`` or ``root/name.N``: concurrent compiles (threads,
    processes) sharing one dump dir never write into each other's folder."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = root / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = root / f"{name}.{n}"
            n += 1


class DumpWriter:
    """Writes one graph's dump; also a pass instrument (after_pass)."""

    def __init__(self, root: str | os.PathLike, graph_name: str):
        self.dir = _reserve_dir(Path(root), graph_name)
        self._step = 0
        self._last_code = ""

    def _write(self, filename: str, text: str) -> None:
        (self.dir / filename).write_text(text)

    def captured(self, gm: GraphModule) -> None:
        self._last_code = readable(gm)
        self._write("00_captured.py", self._last_code)

    # pass instrument interface
    def before_pass(self, name: str, gm: GraphModule, ctx: PassContext) -> None:
        pass

    def after_pass(self, name: str, gm: GraphModule, ctx: PassContext, record: PassRecord) -> None:
        self._step += 1
        if not record.changed:
            return
        code = readable(gm)
        stem = f"{self._step:02d}_{name}"
        self._write(stem + ".py", code)
        diff = difflib.unified_diff(
            self._last_code.splitlines(keepends=True),
            code.splitlines(keepends=True),
            fromfile="before",
            tofile=f"after {name}",
        )
        self._write(stem + ".diff", "".join(diff))
        self._last_code = code

    def groups(self, gm: GraphModule) -> None:
        parts = []
        for _, group in groups(gm):
            info = group.describe()
            parts.append(
                f"# {info['name']}  kind={info['kind']}  attrs={info['attrs']}\n"
                f"#   members: {' -> '.join(info['members'])}\n"
                f"#   inputs:  {', '.join(info['inputs'])}\n"
                f"#   outputs: {', '.join(info['outputs'])}\n" + group.code
            )
        self._write("groups.txt", "\n".join(parts) if parts else "# no fused groups\n")

    def final(self, gm: GraphModule, report: GraphReport) -> None:
        self._write("final.py", readable(gm))
        if report.kernels:
            folder = self.dir / "kernels"
            folder.mkdir(exist_ok=True)
            for kern in report.kernels:
                source = kern.get("source")
                if source:
                    (folder / f"{kern['group']}.c").write_text(source)
                    kern["source_file"] = f"kernels/{kern['group']}.c"
        report.dump_path = str(self.dir)
        self._write("summary.json", json.dumps(report.to_json(), indent=2, default=str))
