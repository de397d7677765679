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

    def __init__(self, message: str = "", detail: str | None = None) -> None:
        super().__init__(message)
        #: what the CLI prints to stderr before the one-line message (e.g. the estimate that did not fit)
        self.detail = detail


class DoesNotFit(QwenDsError):
    """The plan needs more memory than the GPUs have (exit 3)."""

    exit_code = EXIT_DOES_NOT_FIT


class InputError(QwenDsError):
    """Bad input: unknown name, malformed file, impossible sizes (exit 2)."""

    exit_code = EXIT_BAD_INPUT


def one_line(text: str) -> str:
    """Collapse whitespace so a message (e.g. a path with a newline) stays on one line."""
    return " ".join(str(text).split())


def finite_number(flag: str, value: object, low: float = 0.0, low_ok: bool = False, high: float | None = None) -> float:
    """``value`` when it is a finite number above ``low`` (or equal to it when ``low_ok``) and at most
    ``high``; else an InputError naming the flag. float flags accept "nan" and "inf" (Python's float()
    does), and NaN fails every comparison, so a plain ``value <= 0`` check lets it through."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= low if low_ok else value > low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>=' if low_ok else '>'} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise InputError(f"{flag} {value}: must be a finite number {bound}")
    return float(value)


def finite_positive(flag: str, value: object) -> float:
    return finite_number(flag, value)
