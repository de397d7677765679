r"""DeepSpeed hostfiles: parse with DeepSpeed's rules (runner.py `_parse_hostfile`) plus ours.

DeepSpeed 0.19 reads the file in text mode (`open(path, 'r').readlines()`: locale encoding, universal
newlines, so `\n`, `\r\n` and a lone `\r` end a line and nothing else does), strips each line, skips
blank lines and lines starting with `#`, takes `re.search(r'^(\S+)\s+slots=(\d+)', line)` and ignores
the rest of the line; a repeated host or a file without entries is an error; line order = node rank.
We read and split the same way and match the same pattern, so every file we accept gives DeepSpeed
the same (host, slots) list; our rules on top only refuse, each naming the file, the line and the
fix: host names from a safe character set (nothing a shell would interpret: the runner pastes them
into pdsh/ssh command lines), 1 <= slots <= MAX_SLOTS in ASCII digits, only a `# comment` after the
slots, and one line per machine (host names ignore case and `user@`). OpenMPI's `max_slots=M` after the
slots is accepted with a warning (DeepSpeed ignores it and starts `slots` ranks; mpirun of --launcher
openmpi reads the same file and would refuse M < slots, so that is refused).
"""

from __future__ import annotations

import io
import locale
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, one_line

_DS_ENTRY = re.compile(r"^(\S+)\s+slots=(\d+)")  # DeepSpeed's own pattern, used with the same re.search
_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_SLOTS = re.compile(r"[ \t]+max_slots=([0-9]{1,9})(?=[ \t]|#|$)")  # OpenMPI's, after slots=N
_NUMBER = re.compile(r"[0-9]{1,9}")  # a Slurm range bound; ASCII, and short enough for int()
MAX_NODES = 100_000  # a Slurm node list expanding past this is a typo in a range
MAX_SLOTS = 1024  # slots = ranks per node; the largest nodes have 8-16 accelerators, CPU-only runs a few hundred cores


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int


@dataclass(frozen=True)
class Hostfile:
    path: str
    hosts: tuple[Host, ...]
    warnings: tuple[str, ...] = ()  # one line each: accepted, but not what the user may expect

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def world_size(self) -> int:
        return sum(h.slots for h in self.hosts)

    @property
    def equal_slots(self) -> bool:
        return len({h.slots for h in self.hosts}) == 1

    @property
    def gpus_per_node(self) -> int:
        """Slots per node; InputError when nodes differ (the planner assumes one shape)."""
        if not self.equal_slots:
            detail = ", ".join(f"{h.name}={h.slots} (line {h.line})" for h in self.hosts)
            raise InputError(f"{self.path}: nodes have different slot counts ({detail}); give every node the same "
                             "slots=")
        return self.hosts[0].slots

    @property
    def single_host(self) -> bool:
        return self.nodes == 1


def _show(text: str, limit: int = 60) -> str:
    """A value for an error message: one line, and a giant value cut to its start and length."""
    text = one_line(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _slots(digits: str, where: str) -> int:
    """DeepSpeed's int(slots), refused when absurd. The length is checked first: int() of a digit
    string is quadratic in its length and raises ValueError past 4300 digits."""
    if not digits.isascii():
        raise InputError(f"{where}: slots={_show(digits)!r} has non-ASCII digits; write the number with 0-9")
    value = int(digits) if len(digits.lstrip("0")) <= len(str(MAX_SLOTS)) else MAX_SLOTS + 1
    if value > MAX_SLOTS:
        raise InputError(f"{where}: slots={_show(digits)} is more than {MAX_SLOTS}, more GPUs than any node has; "
                         "give the node's GPU count")
    if value == 0:
        raise InputError(f"{where}: slots=0; give the number of GPUs (>= 1) or remove the line")
    return value


def _why(after_slots: str) -> str:
    """Name the whitespace that str.splitlines() breaks on but a text-mode readlines() does not (\\f, U+2028...)."""
    odd = [ch for ch in after_slots[: len(after_slots) - len(after_slots.lstrip())] if ch not in " \t"]
    return f" ({ascii(odd[0])} is not a line break for DeepSpeed; end each line with a newline)" if odd else ""


def _machine(host: str) -> str:
    """What a host name resolves to: DNS ignores case and ssh's user@ picks a login, not a machine."""
    return host.rpartition("@")[2].lower()


def parse_hostfile_lines(lines: list[str], path: str = "<hostfile>") -> Hostfile:
    """Lines as DeepSpeed's fetch_hostfile gets them from readlines(); numbered from 1."""
    hosts: list[Host] = []
    warnings: list[str] = []
    seen: dict[str, Host] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {lineno}"
        m = _DS_ENTRY.search(line)
        if not m:
            raise InputError(f"{where}: {_show(line)!r} is not 'HOST slots=N' (no spaces around '='); fix that line")
        host, tail = m.group(1), line[m.end():]
        max_slots = _MAX_SLOTS.match(tail)
        if max_slots:
            tail = tail[max_slots.end():]
        rest = tail.lstrip()
        if rest and not rest.startswith("#"):
            raise InputError(f"{where}: unexpected {_show(rest)!r} after slots=, which DeepSpeed ignores"
                             f"{_why(line[m.end():])}; only a '# comment' may follow")
        if not _HOST.match(host):
            raise InputError(
                f"{where}: host name {_show(host)!r} has characters outside [A-Za-z0-9._-] (optionally user@); "
                "use the plain host name or IP"
            )
        slots, machine = _slots(m.group(2), where), _machine(host)
        if max_slots:
            most = int(max_slots.group(1))
            if most < slots:
                raise InputError(f"{where}: max_slots={most} is less than slots={slots}, which OpenMPI's mpirun "
                                 "refuses; drop max_slots= (DeepSpeed ignores it) or raise it")
            warnings.append(f"{where}: max_slots={most} is OpenMPI syntax; DeepSpeed ignores it and starts "
                            f"slots={slots} ranks on {_show(host)}")
        if machine in seen:
            first = seen[machine]
            raise InputError(f"{where}: {_show(host)} is listed again: same machine as {_show(first.name)} on line "
                             f"{first.line} (host names ignore case and user@); keep one line per host")
        seen[machine] = Host(host, slots, lineno)
        hosts.append(seen[machine])
    if not hosts:
        raise InputError(f"{path}: no 'HOST slots=N' entries; add one line per node, e.g. 'localhost slots=2'")
    return Hostfile(path, tuple(hosts), tuple(warnings))


def parse_hostfile_text(text: str, path: str = "<hostfile>") -> Hostfile:
    """``text`` split as a text-mode file's readlines() splits it (universal newlines, nothing else)."""
    return parse_hostfile_lines(io.StringIO(text, newline=None).readlines(), path)


def read_hostfile(path: str | Path) -> Hostfile:
    """Read as DeepSpeed's fetch_hostfile does (text mode, locale encoding), so the same bytes give the same lines."""
    encoding = locale.getpreferredencoding(False)
    if Path(path).exists() and not Path(path).is_file():  # /dev/zero would fill memory, a FIFO would block
        raise InputError(f"--hostfile {one_line(path)}: not a regular file (DeepSpeed ignores such a hostfile and runs "
                         "on this host only); pass a hostfile")
    try:
        with open(path, "r", encoding=encoding) as fh:
            lines = fh.readlines()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"--hostfile {one_line(path)}: cannot read it ({one_line(reason)}); pass a readable "
                         "hostfile") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"--hostfile {one_line(path)}: not {encoding} text (byte {exc.object[exc.start]:#04x} at "
                         f"offset {exc.start}), which DeepSpeed cannot read either; save it as {encoding}") from None
    return parse_hostfile_lines(lines, str(path))


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """SLURM_JOB_NODELIST syntax: 'gpu[01-03,07],login1,rack[1-2]-n[1-2]' -> host names in order."""
    def split_top(s: str) -> list[str]:
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "[":
                depth += 1
            elif ch == "]":
                depth -= 1
                if depth < 0:
                    raise InputError(f"SLURM_JOB_NODELIST {_show(nodelist)!r}: unbalanced ']'")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if depth:
            raise InputError(f"SLURM_JOB_NODELIST {_show(nodelist)!r}: unbalanced '['")
        parts.append(cur)
        return [p for p in parts if p]

    def expand(item: str) -> list[str]:
        m = re.search(r"\[([^\[\]]+)\]", item)
        if not m:
            return [item]
        pre, post = item[: m.start()], item[m.end():]
        out = []
        for rng in m.group(1).split(","):
            if "-" in rng:
                lo, hi = rng.split("-", 1)
                if not (_NUMBER.fullmatch(lo) and _NUMBER.fullmatch(hi)) or int(lo) > int(hi):
                    raise InputError(f"SLURM_JOB_NODELIST {_show(nodelist)!r}: bad range {_show(rng)!r}")
                if int(hi) - int(lo) >= MAX_NODES:
                    raise InputError(f"SLURM_JOB_NODELIST {_show(nodelist)!r}: range {rng} is more than {MAX_NODES} "
                                     "hosts")
                width = len(lo)
                vals = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
            else:
                vals = [rng]
            for v in vals:
                out.extend(expand(pre + v + post))
                if len(out) > MAX_NODES:  # checked while expanding: 'a[1-99999]b[1-99999]' must not fill memory
                    raise InputError(f"SLURM_JOB_NODELIST {_show(nodelist)!r}: more than {MAX_NODES} hosts; check the "
                                     "ranges")
        return out

    hosts = [h for item in split_top(nodelist.strip()) for h in expand(item)]
    for h in hosts:
        if not _HOST.match(h):
            raise InputError(f"SLURM_JOB_NODELIST: host name {_show(h)!r} has characters outside [A-Za-z0-9._-]")
    if not hosts:
        raise InputError("SLURM_JOB_NODELIST is empty; run inside a Slurm allocation or pass --nodelist")
    return hosts


def hostfile_text(hosts: list[str], slots: int) -> str:
    if not 1 <= slots <= MAX_SLOTS:
        raise InputError(f"--gpus-per-node {_show(str(slots))}: give the GPUs per node, 1-{MAX_SLOTS}")
    return "".join(f"{h} slots={slots}\n" for h in hosts)
