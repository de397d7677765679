"""Writes that never leave a half-written file and never overwrite without --force."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError, one_line


def read_text(path: str | Path, what: str, fix: str) -> str:
    """A UTF-8 file's text; an unreadable or non-UTF-8 file is an InputError naming ``what`` and ``fix``."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{what} {one_line(path)}: cannot read it ({one_line(exc.strerror or exc)}); {fix}") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} {one_line(path)}: not UTF-8 text; {fix}") from None


def check_writable(paths: list[Path], force: bool) -> None:
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise InputError(f"{', '.join(one_line(p) for p in existing)} already exist(s); pass --force to overwrite or choose another --output-dir")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def with_suppress_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
