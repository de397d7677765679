"""Helpers several test modules share (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import io

from qwen_ds.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    """qwen_ds.cli.main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return rc, out.getvalue(), err.getvalue()


def walk(value, path="$"):
    """(JSON path, value) of every node of a JSON document, depth first: $.a.b[0]."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
