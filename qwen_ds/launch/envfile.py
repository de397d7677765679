"""Environment for the ranks: presets, user --env, and DeepSpeed's `.deepspeed_env` file.

DeepSpeed reads `.deepspeed_env` (in ~ and in the working directory) on its multi-node ssh/MPI
paths and crashes on blank lines, comments or lines without '=' (reference/deepspeed.md §4.5), so
the file is written with only KEY=VAL lines, merged with an existing one after a backup.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from ..errors import InputError, one_line
from ..fileio import write_text_atomic

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PRESETS = {
    # a failed collective raises instead of hanging until the watchdog timeout
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    # fewer fragmentation OOMs: segments grow instead of new blocks being carved
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "PYTHONUNBUFFERED": "1",
}


def parse_env_items(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """--env K=V items. Keys are shell identifiers; values may not contain newlines (they would
    become extra lines of .deepspeed_env)."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise InputError(f"--env {one_line(item)!r}: expected KEY=VALUE, e.g. --env NCCL_SOCKET_IFNAME=ib0")
        key, value = item.split("=", 1)
        if not KEY.match(key):
            raise InputError(f"--env {one_line(key)!r}: a variable name is letters, digits and '_' (not starting with a digit)")
        if any(c in value for c in "\n\r\0"):
            raise InputError(f"--env {key}: the value contains a newline or NUL; give a single-line value")
        out[key] = value
    return out


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


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            raise InputError(f"{path} line {n}: blank line; DeepSpeed's .deepspeed_env reader crashes on it: remove it")
        if "=" not in line:
            raise InputError(f"{path} line {n}: {one_line(line)!r} has no '='; DeepSpeed expects KEY=VALUE lines only")
        k, v = line.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def env_file_text(env: dict[str, str]) -> str:
    return "".join(f"{k}={v}\n" for k, v in env.items())


def write_env_file(path: Path, env: dict[str, str]) -> tuple[Path | None, list[str]]:
    """Merge ``env`` into ``path``: existing keys kept unless we set them; the old file is backed up.
    Returns (backup path or None, keys whose value changed)."""
    merged: dict[str, str] = {}
    backup = None
    changed: list[str] = []
    if path.exists():
        merged = read_env_file(path)
        changed = [k for k, v in env.items() if k in merged and merged[k] != v]
        if changed or any(k not in merged for k in env):
            backup = path.with_name(f"{path.name}.bak.{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(path, backup)
    merged.update(env)
    write_text_atomic(path, env_file_text(merged))
    return backup, changed
