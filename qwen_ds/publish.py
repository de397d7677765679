"""Publishing files so that no reader and no other writer sees a half-done job.

``publish_files`` (gen-config's plan.json + ds_config.json): an exclusive lock on the directory
(``flock`` on ``DIR/.qwen-ds.lock``) is held across "check what exists -> write every temp file and
fsync it -> rename them in order", so of concurrent writers without --force exactly one writes and
the others see its files and stop; with --force the last one wins whole. SIGINT / SIGTERM / SIGHUP
are held back while the lock is held: one that comes before the first rename stops the publish and
leaves the old set, one that comes later is delivered after the last rename, so an interrupt leaves
the old set or the new set, and no temp or lock file. Two renames are still two steps for a reader
that opens the files in between (or after a SIGKILL or a crash between them): gen-config renames
plan.json first and plan.json records the digest of its config, so that mix is a new plan beside an
old config, which launch and validate --plan refuse.

``publish_file`` (plan --chart): one file, temp file then link(2), which refuses to replace an
existing name (no-clobber without a lock), or rename(2) with --force.

Every failure of the file system is one line naming the path (InputError, exit 2), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import InputError, one_line
from .fileio import mkstemp_beside

LOCK_NAME = ".qwen-ds.lock"
LOCK_TIMEOUT_S = 30.0
#: flock errors of file systems that have no locks (some FUSE and NFS mounts): publish without one,
#: the digest check still catches a mixed pair
NO_LOCKS = {getattr(errno, name) for name in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS") if hasattr(errno, name)}
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _why(exc: OSError) -> str:
    return one_line(exc.strerror or exc)


def check_targets(directory: Path, names: list[str], force: bool, flag: str = "--output-dir") -> None:
    """Refuse targets that are directories (rename cannot replace them), and existing targets without --force."""
    for name in names:
        p = directory / name
        if os.path.isdir(p) and not os.path.islink(p):
            raise InputError(f"{one_line(p)} is a directory; remove it or choose another {flag}")
    existing = [directory / n for n in names if os.path.lexists(directory / n)]
    if existing and not force:
        verb = "already exists" if len(existing) == 1 else "already exist"
        raise InputError(f"{', '.join(one_line(p) for p in existing)} {verb}; pass --force to overwrite or choose "
                         f"another {flag}")


def ensure_dir(directory: Path, flag: str = "--output-dir") -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except FileExistsError:  # a name that is not a directory: a file, a dangling symlink, a symlink loop
        what = ("a symlink that leads to no directory (dangling, or a loop)" if os.path.islink(directory)
                else "not a directory")
        raise InputError(f"{flag} {one_line(directory)}: {what}; choose another {flag}") from None
    except OSError as exc:
        raise InputError(f"{flag} {one_line(directory)}: cannot create it ({_why(exc)}); choose another "
                         f"{flag}") from None
    if not os.path.isdir(directory):
        raise InputError(f"{flag} {one_line(directory)}: not a directory; choose another {flag}")


@contextlib.contextmanager
def directory_lock(directory: Path, flag: str = "--output-dir", timeout_s: float = LOCK_TIMEOUT_S,
                   interrupted: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Exclusive lock on ``directory`` for this process; the lock file is removed on release.

    The holder unlinks the lock file before it unlocks, so a waiter that locked the old (unlinked)
    file sees that the path no longer names it and locks the new one: never two holders. Waiting
    stops with KeyboardInterrupt when ``interrupted()`` (a signal held back by held_signals)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (DeepSpeed's launcher needs Linux anyway); the digest check still holds
        yield
        return
    path = directory / LOCK_NAME
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise InputError(f"{flag} {one_line(directory)}: cannot write into it ({_why(exc)}); choose another "
                             f"{flag}") from None
        try:
            if not _wait_for_lock(fcntl, fd, directory, flag, timeout_s, deadline, interrupted):
                fd_ours = False  # a file system without locks: no one can hold one here either
            else:
                st, fd_ours = os.fstat(fd), True
                try:
                    now = os.stat(path)
                except FileNotFoundError:
                    now = None
        except BaseException:
            os.close(fd)
            raise
        if not fd_ours:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            yield
            return
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            break
        os.close(fd)  # the previous holder removed that file: lock the one at the path now
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _wait_for_lock(fcntl, fd: int, directory: Path, flag: str, timeout_s: float, deadline: float,
                   interrupted: Callable[[], bool]) -> bool:
    """True once ``fd`` is locked; False where the file system has no locks."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in NO_LOCKS:
                return False
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise InputError(f"{flag} {one_line(directory)}: cannot lock {LOCK_NAME} ({_why(exc)}); choose another "
                                 f"{flag}") from None
        if interrupted():
            raise KeyboardInterrupt
        if time.monotonic() > deadline:
            raise InputError(f"{flag} {one_line(directory)}: another qwen-ds has held "
                             f"{one_line(directory / LOCK_NAME)} for {timeout_s:.0f} s; wait for it, or remove that "
                             "file if no qwen-ds is running")
        time.sleep(0.01)


@contextlib.contextmanager
def held_signals() -> Iterator[list[int]]:
    """SIGINT / SIGTERM / SIGHUP wait until the block ends, then arrive as they would have (once each).
    The block gets the list of those held so far, to stop early where stopping is still clean.

    Only the main thread can set handlers; elsewhere (the Python API in a thread) the block runs as is.
    Signals this process ignores stay ignored."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    old: dict[int, object] = {}
    try:
        for sig in HELD_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, lambda signum, _frame: pending.append(signum))
        yield pending
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def _write_temp(directory: Path, name: str, data: bytes) -> str:
    fd, tmp = mkstemp_beside(directory, name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable; some file systems cannot fsync a directory, which costs only durability."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_files(directory: Path, files: list[tuple[str, bytes]], force: bool, flag: str = "--output-dir") -> None:
    """Write ``files`` (name, content) into ``directory`` as one unit, renamed in the order given.

    Without ``force`` nothing is written if any of them exists; the check is made under the lock,
    so concurrent calls cannot both pass it. Signals are held from the lock to its release: one that
    comes before the first rename stops the publish (temp files removed, nothing replaced), one that
    comes later waits for the last rename; either way it is delivered before this returns."""
    directory = Path(directory)
    ensure_dir(directory, flag)
    names = [n for n, _ in files]
    with held_signals() as pending, directory_lock(directory, flag, interrupted=lambda: bool(pending)):
        check_targets(directory, names, force, flag)
        temps: list[str] = []
        try:
            try:
                for name, data in files:
                    temps.append(_write_temp(directory, name, data))
            except OSError as exc:
                raise InputError(f"{flag} {one_line(directory)}: cannot write into it ({_why(exc)}); choose another "
                                 f"{flag}") from None
            if pending:  # interrupted before anything was replaced: stop here, the old files stay
                raise KeyboardInterrupt
            for i, (name, tmp) in enumerate(zip(names, temps)):
                try:
                    os.replace(tmp, directory / name)
                except OSError as exc:
                    raise InputError(f"{one_line(directory / name)}: cannot replace it ({_why(exc)})"
                                     + (f"; {', '.join(names[:i])} already replaced" if i else "")) from None
                temps[i] = ""
            _fsync_dir(directory)
        finally:
            for tmp in temps:
                if tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)


def publish_file(path: Path, write: Callable[[str], None], force: bool, flag: str) -> None:
    """Create ``path`` whole: ``write(temp_path)`` fills a temp file beside it, which then takes the
    name (link(2): fails if the name exists, so without ``force`` a concurrent writer cannot be
    overwritten either; rename(2) with ``force``)."""
    path = Path(path)
    directory = path.parent
    check_targets(directory, [path.name], force, flag)
    try:
        fd, tmp = mkstemp_beside(directory, path.name)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"{flag} {one_line(path)}: cannot write it ({_why(exc)})") from None
    try:
        write(tmp)
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if force:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise InputError(f"{one_line(path)} already exists; pass --force to overwrite or choose another "
                                     f"{flag}") from None
                except OSError:  # no hard links on this file system: check, then rename
                    check_targets(directory, [path.name], force, flag)
                    os.replace(tmp, path)
        except OSError as exc:
            raise InputError(f"{flag} {one_line(path)}: cannot write it ({_why(exc)})") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
