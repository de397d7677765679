"""Per-rank wrapper started by DeepSpeed's launcher: runs the real entry as a child, prefixes its
output with the rank, forwards SIGINT/SIGTERM, and writes run_dir/rank-<R>.json with the exit
status. `python -m qwen_ds.launch.rank [--local_rank=N] --payload TOKEN` (qwen_ds.launch.payload: the
entry, its arguments and the environment, in a form no remote shell or MPI launcher alters).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .payload import FLAG, LAUNCH_T0, RankPayload

RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK")


def _parse(argv: list[str]) -> tuple[str | None, RankPayload]:
    """DeepSpeed's launch.py puts --local_rank=N before our arguments; MPI and Slurm pass none."""
    local_rank, token = None, None
    for i, a in enumerate(argv):
        if a.startswith("--local_rank="):
            local_rank = a.split("=", 1)[1]
        elif a == FLAG and i + 1 < len(argv):
            token = argv[i + 1]
    if token is None:
        raise SystemExit(f"qwen_ds.launch.rank: missing {FLAG} (start ranks with qwen-ds launch)")
    return local_rank, RankPayload.decode(token)


def _rank() -> str:
    for var in RANK_VARS:
        if os.environ.get(var) is not None:
            return os.environ[var]
    return "0"


def main(argv: list[str] | None = None) -> int:
    local_rank, job = _parse(sys.argv[1:] if argv is None else argv)
    rank = _rank()
    # the user's --env and our presets; the launcher's per-rank variables (RANK, LOCAL_RANK, ...) are
    # never among them (parse_env_items refuses those keys), so nothing DeepSpeed set is overridden
    os.environ.update(job.env)
    os.environ.setdefault(LAUNCH_T0, f"{time.time():.3f}")  # a rank a remote shell started: from here
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", local_rank)
    cmd = [sys.executable, "-u"] + (["-m", job.target] if job.kind in ("builtin", "module") else [job.target])
    if local_rank is not None and job.kind != "builtin":
        cmd.append(f"--local_rank={local_rank}")  # what DeepSpeed would have passed the script
    cmd += job.args
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)

    def forward(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    prefix = f"[rank {rank}] ".encode()

    def pump() -> None:
        out = sys.stdout.buffer
        for line in iter(child.stdout.readline, b""):
            out.write(prefix + line)
            out.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    rc = child.wait()
    t.join(timeout=5)
    status = {"rank": int(rank), "local_rank": local_rank, "returncode": rc, "signal": -rc if rc < 0 else None,
              "pid": child.pid, "ended": time.time()}
    run_dir = Path(job.run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / f".rank-{rank}.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(run_dir / f"rank-{rank}.json")
    except OSError as exc:
        print(f"[rank {rank}] qwen-ds: cannot write the status file in {run_dir}: {exc}", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
