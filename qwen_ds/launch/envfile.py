"""Environment for the ranks: presets and the user's --env (carried in the rank payload), and
DeepSpeed's own `.deepspeed_env` files read exactly as its runner reads them.

qwen-ds never writes `.deepspeed_env`: the file is shared by every launch from the same directory
(concurrent launches raced on it and lost variables), its values are pasted into remote shells
(reference/deepspeed.md §4.5), and each merge left a backup of the user's secrets behind. --env
values travel in the rank payload instead (qwen_ds.launch.payload), byte for byte.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InputError, one_line

KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PRESETS = {
    # a failed collective raises instead of hanging until the watchdog timeout
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # fewer fragmentation OOMs: segments grow instead of new blocks being carved
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "PYTHONUNBUFFERED": "1",
}
# set per rank by DeepSpeed's launch.py (or the MPI / Slurm launcher); a user value would break the job
LAUNCHER_SET = {
    "RANK": "--include/--exclude choose the ranks", "LOCAL_RANK": "--include/--exclude choose the ranks",
    "WORLD_SIZE": "the hostfile's slots give it", "LOCAL_SIZE": "the hostfile's slots give it",
    "CROSS_RANK": "the hostfile's line order gives it", "CROSS_SIZE": "the hostfile gives it",
    "MASTER_ADDR": "use --master-addr", "MASTER_PORT": "use --master-port",
    "CUDA_VISIBLE_DEVICES": "use --include HOST:0,1 (DeepSpeed sets it per node from the hostfile)",
}


def parse_env_items(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """--env K=V items. Keys are shell identifiers; any UTF-8 value is carried byte for byte (quotes,
    `$`, backticks, newlines included) except NUL, which no environment can hold."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--env {one_line(ascii_safe(item))!r}: expected KEY=VALUE, e.g. --env "
                             "NCCL_SOCKET_IFNAME=ib0")
        key, value = item.split("=", 1)
        if not KEY.fullmatch(key):
            raise InputError(f"--env {one_line(ascii_safe(key))!r}: a variable name is ASCII letters, digits and '_' "
                             "(not starting with a digit)")
        if key in LAUNCHER_SET:
            raise InputError(f"--env {key}: set per rank by DeepSpeed's launcher; {LAUNCHER_SET[key]}")
        if ascii_safe(value) != value:
            raise InputError(f"--env {key}: the value is not valid UTF-8 ({ascii_safe(value)[:60]!r}); give UTF-8 text")
        if "\0" in value:
            raise InputError(f"--env {key}: the value contains a NUL byte, which no environment variable can hold")
        out[key] = value
    return out


def ascii_safe(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes from a non-UTF-8 argv) shown as \\xNN, so
    an error message about them can be printed at all."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def deepspeed_arch_list(value: str | None) -> str | None:
    """DeepSpeed 0.19.8's JIT op builder parses TORCH_CUDA_ARCH_LIST entries as int major.minor and
    crashes on arch-specific ones such as '9.0a' (seen in NVIDIA images): the list without suffixes,
    or None when nothing needs changing."""
    if not value:
        return None
    parts = value.replace(";", " ").split()
    clean = [p.rstrip("aAfF") if p[:1].isdigit() else p for p in parts]
    return " ".join(dict.fromkeys(clean)) if clean != parts else None


def rank_env(user: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    env = {**PRESETS}
    fixed = deepspeed_arch_list((environ if environ is not None else os.environ).get("TORCH_CUDA_ARCH_LIST"))
    if fixed:
        env["TORCH_CUDA_ARCH_LIST"] = fixed
    return {**env, **user}


def deepspeed_env_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, key, value) as DeepSpeed 0.19.8's runner reads the file: text mode (so \\r\\n, \\r
    and \\n end a line, nothing else), `split('=', 1)` per line, the newline kept in the value (its
    add_export strips both sides later). A line without '=' (a blank line too) crashes DeepSpeed's
    runner: InputError naming the line."""
    with open(path, "r") as fd:  # the locale encoding, as DeepSpeed opens it
        lines = fd.readlines()
    out = []
    for n, line in enumerate(lines, 1):
        if "=" not in line:
            what = "blank line" if not line.strip() else f"{one_line(line)[:60]!r} has no '='"
            raise InputError(f"{path} line {n}: {what}; DeepSpeed's runner crashes on it (it expects KEY=VALUE lines "
                             "only): fix or remove that line")
        key, value = line.split("=", 1)
        out.append((n, key, value))
    return out


def read_env_file(path: Path) -> dict[str, str]:
    """KEY -> VALUE as DeepSpeed's runner will export them (both sides stripped)."""
    return {k.strip(): v.strip() for _, k, v in deepspeed_env_lines(path)}
