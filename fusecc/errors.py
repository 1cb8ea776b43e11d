"""Exceptions and warnings fusecc raises. Every message names the thing that
is wrong (the option, the op, the pass, the group) so a user can act on it."""


class FuseccError(Exception):
    """Base class of every error fusecc raises on purpose."""


class OptionError(FuseccError, ValueError):
    """An unknown option, a value of the wrong type, or a value out of range."""


class PassError(FuseccError):
    """A pass produced a graph that is not valid (raised in debug mode)."""

    def __init__(self, pass_name: str, problem: str):
        super().__init__(f"pass {pass_name!r} broke the graph: {problem}")
        self.pass_name = pass_name


class UnsupportedError(FuseccError):
    """Something fusecc was asked to do that it cannot do (an op, a dtype, a
    target). Raised only where falling back to ATen is impossible or was
    turned off with ``fallback="error"``."""


class FallbackWarning(UserWarning):
    """Part of a graph runs as plain ATen instead of fusecc's code."""


class KeepUnfused(FuseccError):
    """A target chose not to run a block as one kernel (e.g. the tuner
    measured its layers faster one by one); the layers are compiled instead."""


class UseLibrary(FuseccError):
    """The tuner measured a group's ATen ops (the vendor libraries behind
    them: oneDNN, MKL) faster than its best generated kernel; the group runs
    as ATen. Raised by a target's compile, recorded as a decision, never a
    fallback."""
