"""Plain-text tables and byte formatting (no rich: it costs start-up time on every call)."""

from __future__ import annotations

from .units import GIB


def gib(n: float) -> str:
    return f"{n / GIB:,.2f}"


def human_count(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Columns padded to width; ``align`` is one char per column, 'l' or 'r' (default: first l, rest r)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def fmt(row: list[str]) -> str:
        cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(row, widths, align)]
        return "  ".join(cells).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)
