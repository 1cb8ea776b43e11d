"""All of fusecc's options in one dataclass.

Every option can be given three ways, later ones winning:
defaults < ``FUSECC_<NAME>`` environment variables < ``options={...}``
(the dict passed to ``torch.compile(..., backend="fusecc", options=...)``).
Unknown names and ill-typed values are rejected with an error that names
the option, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

from .errors import OptionError

_FALSE = {"0", "false", "no", "off", ""}
_TRUE = {"1", "true", "yes", "on"}


def _field(default: Any, help: str, *, choices: tuple[str, ...] | None = None, **kw: Any) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


@dataclasses.dataclass(frozen=True)
class Options:
    target: str = _field(
        "c", "where fused groups run: generated C kernels ('c'), plain ATen ('aten'), ...; see `fusecc --help`"
    )
    passes: dict = _field({}, "switch passes on or off by name, e.g. {'fold_bn': False}; env form: 'fold_bn=0,cse=1'")
    freeze: bool = _field(
        True,
        "inference graphs treat parameters and buffers as constants (folded, packed once); "
        "an in-place change to a frozen parameter triggers a recompile",
    )
    fallback: str = _field(
        "warn",
        "what to do with an op or group fusecc cannot compile: run it as ATen and warn, "
        "run it as ATen silently, or raise",
        choices=("warn", "silent", "error"),
    )
    debug: bool = _field(False, "lint and shape-propagate the graph after every pass; name the pass that broke it")
    dump_dir: str | None = _field(None, "write IR dumps (graphs per pass, groups, timings, summary.json) here")
    cache_dir: str | None = _field(None, "compiled-kernel cache (default: $XDG_CACHE_HOME/fusecc or ~/.cache/fusecc)")
    verbose: bool = _field(False, "log what each pass did to stderr")
    chain_kernels: bool = _field(
        True,
        "call runs of kernels between planned buffers with one foreign call (False: one graph call per kernel, "
        "e.g. to time each kernel in the model)",
    )
    library_check: bool = _field(
        True,
        "cuda target: time each generated kernel against PyTorch's own kernels for its group (cuDNN, cuBLAS) "
        "while compiling and run the faster (False: always the generated kernel)",
    )
    profile: bool = _field(
        False,
        "time every generated kernel after compiling and record achieved GFLOP/s and GB/s against this "
        "machine's measured peaks (blocks also against their layers run one by one); `fusecc inspect` shows it",
    )
    tune: str = _field(
        "off",
        "kernel parameters: defaults ('off'), the best measured in the tuning database ('use'), "
        "or measure candidates now and keep the best ('tune'); see `fusecc tune`",
        choices=("off", "use", "tune"),
    )
    tune_trials: int = _field(16, "with tune='tune': measurements per kernel (those already in the database count)")
    attention_sparsity: dict = _field(
        {},
        "sparse attention by a calibrated plan: {'plan': path or dict from fusecc.calibrate, 'budget': its recall}; "
        "empty: attention stays exact; env form: the plan's path",
    )

    # -- construction -----------------------------------------------------

    @classmethod
    def resolve(
        cls, user: Options | Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Options:
        """Defaults, then ``FUSECC_*`` variables, then ``user``; validated."""
        if isinstance(user, Options):
            return user
        if user is not None and not isinstance(user, Mapping):
            raise OptionError(f"fusecc options must be a dict, got {type(user).__name__}")
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            env_name = env_var(f.name)
            if env_name in environ:
                values[f.name] = _parse_env(f, environ[env_name])
        for key, value in (user or {}).items():
            if key not in _FIELDS:
                raise OptionError(_unknown_message("option", key, list(_FIELDS)))
            values[key] = value
        return cls(**values)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f, getattr(self, f.name))
        from .passes import PASS_NAMES  # late: passes import options

        for name, enabled in self.passes.items():
            if name not in PASS_NAMES:
                raise OptionError(_unknown_message("pass", name, PASS_NAMES, where="option 'passes'"))
            if not isinstance(enabled, bool):
                raise OptionError(f"option 'passes': value for {name!r} must be True or False, got {enabled!r}")
        from .targets import TARGETS

        unknown = set(self.attention_sparsity) - {"plan", "budget"}
        if unknown:
            raise OptionError(_unknown_message("attention_sparsity key", sorted(unknown)[0], ["plan", "budget"]))
        if self.attention_sparsity and "plan" not in self.attention_sparsity:
            raise OptionError(
                "option 'attention_sparsity' needs a 'plan': fusecc.calibrate(model, inputs, budget=...) "
                "measures the heads' patterns and writes one"
            )
        if self.tune_trials < 1:
            raise OptionError(f"option 'tune_trials' must be at least 1, got {self.tune_trials}")
        if self.target not in TARGETS:
            raise OptionError(_unknown_message("target", self.target, list(TARGETS), where="option 'target'"))

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)

    def pass_enabled(self, name: str) -> bool:
        return self.passes.get(name, True)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Options)}


def env_var(name: str) -> str:
    return "FUSECC_" + name.upper()


def describe() -> list[dict[str, str]]:
    """One row per option (name, type, default, env var, help) for `fusecc --help`."""
    rows = []
    for f in dataclasses.fields(Options):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_text = f.metadata["help"]
        if f.metadata["choices"]:
            help_text += " (" + " | ".join(f.metadata["choices"]) + ")"
        rows.append(
            {"name": f.name, "type": str(f.type), "default": repr(default), "env": env_var(f.name), "help": help_text}
        )
    return rows


def _unknown_message(kind: str, name: object, known: list[str], where: str = "") -> str:
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown fusecc {kind} {name!r}{hint}; known: {', '.join(known)}"


def _check_type(f: dataclasses.Field, value: Any) -> None:
    expected = {"bool": bool, "int": int, "str": str, "dict": dict, "str | None": (str, type(None))}[str(f.type)]
    # bool is a subclass of int but no int option exists; reject 1/0 for bools
    # anyway so {'debug': 1} gets the same clear error as {'debug': 'yes'}.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        want = str(f.type).replace("dict", "dict of pass name -> bool" if f.name == "passes" else "dict")
        raise OptionError(f"option {f.name!r} expects {want}, got {type(value).__name__} {value!r}")
    choices = f.metadata["choices"]
    if choices and value not in choices:
        raise OptionError(f"option {f.name!r} must be one of {', '.join(choices)}; got {value!r}")


def _parse_bool(name: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise OptionError(f"{name}={text!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")


def _parse_env(f: dataclasses.Field, text: str) -> Any:
    name = env_var(f.name)
    kind = str(f.type)
    if kind == "bool":
        return _parse_bool(name, text)
    if f.name == "attention_sparsity":  # the plan's path
        return {"plan": text} if text else {}
    if kind == "dict":  # passes: "fold_bn=0,cse=1"
        out = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, val = item.partition("=")
            if not sep:
                raise OptionError(f"{name}: expected NAME=0|1 items separated by commas, got {item!r}")
            out[key.strip()] = _parse_bool(f"{name} item {key.strip()!r}", val)
        return out
    if kind == "str | None":
        return text or None
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise OptionError(f"{name}={text!r} is not an integer") from None
    return text
