"""One error type per kind of failure; the CLI maps each to its exit code.

Messages are one line and name the bad value, what is allowed, and the flag or file to fix.
"""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3


class QwenDsError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_RUNTIME


class InputError(QwenDsError):
    """Bad input: unknown name, malformed file, impossible sizes (exit 2)."""

    exit_code = EXIT_BAD_INPUT


def one_line(text: str) -> str:
    """Collapse whitespace so a message (e.g. a path with a newline) stays on one line."""
    return " ".join(str(text).split())
