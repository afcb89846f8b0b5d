"""What the command line says when something goes wrong: one line naming the culprit, never a traceback
(``--debug`` or ``PROBE_DEBUG=1`` shows one)."""

from __future__ import annotations


def debugging() -> bool:
    """Whether ``--debug`` or ``PROBE_DEBUG=1`` asked for tracebacks (the command line sets the variable)."""
    import os

    return os.environ.get("PROBE_DEBUG", "") not in ("", "0")


def command_error(error: BaseException):
    """What a command raises for an error whose message says it all: a one-line ClickException, or with
    ``--debug`` the error itself, traceback and all."""
    import click

    if debugging():
        return error
    return click.ClickException(str(error))


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line, or its type's name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UserError(Exception):
    """An error whose message already names the field, row, file or plugin at fault, and what to do: the
    command line prints it as it is. Every such error in probe derives from it (ConfigError, DataError,
    PluginError, ProbeError, HookError, ReportError)."""


def explain(error: BaseException) -> str:
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, MemoryError):
        return "out of memory; lower batch_size, use a smaller dtype, or a machine with more memory"
    return (f"{type(error).__name__}: {error}\n"
            "probe did not expect this; rerun with --debug (or PROBE_DEBUG=1) to see where it happened, "
            "and report it with that output")
