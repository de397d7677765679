"""DeepSpeed runner options `launch` passes on without modelling them further: --launcher-args,
--ssh-port, --bind-cores-to-rank and --bind-core-list, each checked against what DeepSpeed 0.19.8
does with it (deepspeed/launcher/runner.py, multinode_runner.py, utils/numa.py).

--launcher_args is `shlex.split` by every multi-node runner and its words inserted into the backend's
argv: `pdsh -S -f 1024 -w HOSTS WORDS "export ...; cd ...; python ..."` (pdsh's first non-option word
starts the command each node's SHELL runs), `mpirun ... WORDS -x/-env/-genv ... PROGRAM` (the first
non-option word becomes the program), `srun -n N WORDS --export=... PROGRAM`. So: for pdsh only the
pdsh options below, each with a checked value (nothing reaches the remote shell); for the MPI and
Slurm launchers words of characters no shell interprets (some launchers forward options to their
remote daemons over ssh), the first one an option, and no MPMD ':' separator.
"""

from __future__ import annotations

import re
import shlex

from ..errors import InputError, one_line

PDSH_VALUED = {"-l": ("a user name", re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")),
               "-t": ("seconds", re.compile(r"[1-9][0-9]{0,5}")),
               "-u": ("seconds", re.compile(r"[1-9][0-9]{0,5}")),
               "-f": ("a fan-out", re.compile(r"[1-9][0-9]{0,4}"))}
PDSH_FLAGS = ("-S", "-b", "-d", "-N")
PDSH_REFUSED = {opt: "DeepSpeed picks the hosts from the hostfile (-w); use --include / --exclude"
                for opt in ("-w", "-x", "-g", "-X", "-a")}
PDSH_REFUSED["-R"] = "DeepSpeed runs pdsh over ssh (PDSH_RCMD_TYPE=ssh)"
MPI_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./^-]+")  # means itself to sh, mpirun, srun
MAX_CORE = 65535  # a core id past this is a typo, and DeepSpeed would expand the range into a list


def _shown(text: str) -> str:
    return repr(one_line(text)[:80])


def split_launcher_args(text: str | None, launcher: str) -> tuple[str, ...]:
    """--launcher-args as the words DeepSpeed's runner will insert (shlex.split), refused unless every
    word is harmless where ``launcher`` puts it."""
    if text is None:
        return ()
    flag = f"--launcher-args {_shown(text)}"
    bad = re.search(r"[\x00-\x1f\x7f]", text)
    if bad:
        raise InputError(f"{flag}: contains the control character {bad.group()!r} (NUL, newline...), which no "
                         "launcher command line can carry; give the options on one line")
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise InputError(f"{flag}: {exc} (DeepSpeed splits it with shlex.split); balance the quotes") from None
    if not words:
        raise InputError(f"{flag}: no options in it; drop --launcher-args or give options, e.g. "
                         f"{'-l admin' if launcher == 'pdsh' else '--mca btl_tcp_if_include ib0'}")
    if launcher == "pdsh":
        _check_pdsh(words, flag)
    else:
        _check_mpi(words, flag, launcher)
    return words


def _check_pdsh(words: tuple[str, ...], flag: str) -> None:
    allowed = f"allowed: {', '.join(PDSH_FLAGS)}, {', '.join(f'{o} VALUE' for o in PDSH_VALUED)}"
    i = 0
    while i < len(words):
        w = words[i]
        if w in PDSH_REFUSED:
            raise InputError(f"{flag}: pdsh option {w}: {PDSH_REFUSED[w]}")
        if w in PDSH_VALUED:
            what, pattern = PDSH_VALUED[w]
            if i + 1 == len(words):
                raise InputError(f"{flag}: pdsh option {w} needs {what} after it")
            if not pattern.fullmatch(words[i + 1]):
                raise InputError(f"{flag}: {_shown(words[i + 1])} after {w} is not {what} ({pattern.pattern})")
            i += 2
            continue
        if w not in PDSH_FLAGS:
            where = ("would start the command every node's shell runs (pdsh's first non-option word)"
                     if not w.startswith("-") else "is not a pdsh option qwen-ds passes")
            raise InputError(f"{flag}: {_shown(w)} {where}; {allowed} (each a separate word)")
        i += 1


def _check_mpi(words: tuple[str, ...], flag: str, launcher: str) -> None:
    tool = "srun" if launcher == "slurm" else "mpirun"
    for w in words:
        if not MPI_WORD.fullmatch(w):
            c = next(ch for ch in w + " " if not MPI_WORD.fullmatch(ch))
            raise InputError(f"{flag}: {_shown(w)} contains {c!r}; {tool} options for --launcher {launcher} are words "
                             "of letters, digits and _@%+=:,./^- (nothing a shell on a node could interpret)")
        if w == ":":
            raise InputError(f"{flag}: ':' separates programs on an {tool} command line (DeepSpeed's --launcher "
                             f"{launcher} command has to stay one program); remove it")
    if not words[0].startswith("-"):
        raise InputError(f"{flag}: {_shown(words[0])} is not an option, and {tool} would run it as the program; "
                         "start with an option, e.g. --launcher-args '--mca btl_tcp_if_include ib0'")


def parse_ssh_port(value: str | None) -> int | None:
    """--ssh-port: 1..65535 (DeepSpeed's runner takes any int and pastes it into ssh / pdsh arguments)."""
    if value is None:
        return None
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InputError(f"--ssh-port {_shown(str(value))}: choose a TCP port 1-65535 (the nodes' sshd port)")
    return int(text)


def parse_bind_core_list(value: str | None) -> tuple[int, ...] | None:
    """--bind-core-list as DeepSpeed's parse_range_list reads it ('0,2-4,6': ascending, not overlapping),
    in ASCII digits, every core id 0..MAX_CORE: the core ids, or None."""
    if value is None:
        return None
    flag = f"--bind-core-list {_shown(value)}"
    cores: list[int] = []
    for item in value.split(","):
        m = re.fullmatch(r"([0-9]{1,5})(?:-([0-9]{1,5}))?", item)
        if not m:
            raise InputError(f"{flag}: {item[:40]!r} is not a core id or a range a-b; give comma-separated ids and "
                             "ranges without spaces, e.g. 0-15,32-47")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi > MAX_CORE or lo > hi:
            raise InputError(f"{flag}: {item} is not a range of core ids 0-{MAX_CORE} with start <= end")
        if cores and lo <= cores[-1]:
            raise InputError(f"{flag}: {item} overlaps or comes before an earlier entry; DeepSpeed needs ascending, "
                             "non-overlapping ranges")
        cores.extend(range(lo, hi + 1))
    return tuple(cores)
