"""DeepSpeed hostfiles: parse with DeepSpeed's rules (runner.py `_parse_hostfile`) plus ours.

DeepSpeed: one `host slots=N` per line, blank lines and lines starting with `#` skipped, duplicate
hosts and files without entries are errors, line order = node rank. Ours, on top: host names from
a safe character set (nothing a shell would interpret: the runner pastes them into pdsh/ssh
command lines), slots > 0, only a `# comment` may follow the slots, and the error names the file,
the line and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, one_line

_LINE = re.compile(r"^(?P<host>\S+)\s+slots=(?P<slots>\d+)\s*(?P<rest>.*)$")
_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int


@dataclass(frozen=True)
class Hostfile:
    path: str
    hosts: tuple[Host, ...]

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
            raise InputError(f"{self.path}: nodes have different slot counts ({detail}); give every node the same slots=")
        return self.hosts[0].slots

    @property
    def single_host(self) -> bool:
        return self.nodes == 1


def parse_hostfile_text(text: str, path: str = "<hostfile>") -> Hostfile:
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path} line {lineno}"
        m = _LINE.match(line)
        if not m:
            raise InputError(f"{where}: {one_line(line)!r} is not 'HOST slots=N' (no spaces around '='); fix that line")
        host, slots, rest = m.group("host"), int(m.group("slots")), m.group("rest")
        if rest and not rest.startswith("#"):
            raise InputError(f"{where}: unexpected {one_line(rest)!r} after slots=; only a '# comment' may follow")
        if not _HOST.match(host):
            raise InputError(
                f"{where}: host name {one_line(host)!r} has characters outside [A-Za-z0-9._-] (optionally user@); "
                "use the plain host name or IP"
            )
        if slots == 0:
            raise InputError(f"{where}: {host} has slots=0; give the number of GPUs (>= 1) or remove the line")
        if host in seen:
            raise InputError(f"{where}: {host} is listed again (first on line {seen[host]}); keep one line per host")
        seen[host] = lineno
        hosts.append(Host(host, slots, lineno))
    if not hosts:
        raise InputError(f"{path}: no 'HOST slots=N' entries; add one line per node, e.g. 'localhost slots=2'")
    return Hostfile(path, tuple(hosts))


def read_hostfile(path: str | Path) -> Hostfile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"--hostfile {one_line(path)}: cannot read it ({one_line(reason)}); pass a readable hostfile") from None
    return parse_hostfile_text(text, str(path))


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
                    raise InputError(f"SLURM_JOB_NODELIST {one_line(nodelist)!r}: unbalanced ']'")
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if depth:
            raise InputError(f"SLURM_JOB_NODELIST {one_line(nodelist)!r}: unbalanced '['")
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
                if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                    raise InputError(f"SLURM_JOB_NODELIST {one_line(nodelist)!r}: bad range {rng!r}")
                width = len(lo)
                vals = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
            else:
                vals = [rng]
            for v in vals:
                out.extend(expand(pre + v + post))
        return out

    hosts = [h for item in split_top(nodelist.strip()) for h in expand(item)]
    for h in hosts:
        if not _HOST.match(h):
            raise InputError(f"SLURM_JOB_NODELIST: host name {one_line(h)!r} has characters outside [A-Za-z0-9._-]")
    if not hosts:
        raise InputError("SLURM_JOB_NODELIST is empty; run inside a Slurm allocation or pass --nodelist")
    return hosts


def hostfile_text(hosts: list[str], slots: int) -> str:
    if slots < 1:
        raise InputError(f"--gpus-per-node {slots}: must be >= 1")
    return "".join(f"{h} slots={slots}\n" for h in hosts)
