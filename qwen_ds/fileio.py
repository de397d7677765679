"""Config reads bounded in size and kind; writes that never leave a half-written file and never overwrite
without --force."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError, one_line


#: a ds_config, config.json or plan.json is a few KiB; 64 MiB leaves room for any real one and keeps
#: a wrong file (a checkpoint, a dataset) from costing seconds and gigabytes before it is refused
CONFIG_LIMIT = 64 * 2**20


def read_text(path: str | Path, what: str, fix: str, limit: int = CONFIG_LIMIT) -> str:
    """A UTF-8 file's text; an unreadable, non-UTF-8, non-regular or over-``limit`` file is an
    InputError naming ``what`` and ``fix``."""
    data = read_bytes_bounded(path, what, fix, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {one_line(path)}: not UTF-8 text; {fix}") from None
    # universal newlines, as the text-mode read this replaced did (keeps JSON line numbers the same)
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def read_bytes_bounded(path: str | Path, what: str, fix: str, limit: int = CONFIG_LIMIT) -> bytes:
    """At most ``limit`` bytes of a regular file. /dev/zero, a FIFO or a directory is refused before
    any read; the read itself stops at limit + 1 bytes because /proc files report size 0."""
    where = f"{what} {one_line(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer would block a plain open
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({one_line(exc.strerror or exc)}); {fix}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: {_file_kind(st.st_mode)}, not a regular file; {fix}")
        if st.st_size > limit:
            raise InputError(f"{where}: {st.st_size / 2**20:.1f} MiB is over the {_mib(limit)} limit for a config "
                             f"file; {fix}")
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise InputError(f"{where}: cannot read it ({one_line(exc.strerror or exc)}); {fix}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputError(f"{where}: more than the {_mib(limit)} limit for a config file; {fix}")
    return data


def _read_at_most(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 2**20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _mib(n: int) -> str:
    if n < 2**20:
        return f"{n:,} B"
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n / 2**20:.1f} MiB"


def _umask() -> int:
    try:  # Linux >= 4.7 shows it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def mkstemp_beside(directory: Path, name: str) -> tuple[int, str]:
    """A temp file beside ``name`` with the mode open() would give the file (mkstemp's is 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except (OSError, AttributeError):  # no fchmod (Windows before 3.13): keep mkstemp's mode
        pass
    return fd, tmp


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = mkstemp_beside(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with_suppress_unlink(tmp)
        raise


def with_suppress_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
