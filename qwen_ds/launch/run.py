"""run(spec): the only place that starts the launcher. The runner gets its own process group;
SIGINT/SIGTERM to us go to that whole group; when the runner ends, whatever is left of the group is
terminated; the job counts as successful only if the runner exited 0 AND every rank of this host
wrote a status file with exit code 0 (DeepSpeed's runner exits 0 when its launcher is killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .build import LaunchSpec
from .payload import LAUNCH_T0

GRACE_S = 20
SHM_DIR = Path("/dev/shm")


def clear_shm_buffers(master_addr: str, master_port: str) -> list[Path]:
    """DeepSpeed's CPU shared-memory all-reduce leaves /dev/shm/deepspeed_allreduce_buffer_*_<addr>_<port>_*
    behind (69 MB a rank, never removed); a later job on the same address and port maps the stale
    buffer and aborts (exit 134). Remove this job's buffers before it starts and after it ends."""
    removed = []
    for f in SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{master_addr}_{master_port}_*"):
        try:
            f.unlink()
            removed.append(f)
        except OSError:
            pass
    return removed


def _kill_group(pgid: int, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def rank_statuses(run_dir: Path) -> dict[int, dict]:
    out = {}
    for f in sorted(run_dir.glob("rank-*.json")):
        try:
            d = json.loads(f.read_text())
            out[int(d["rank"])] = d
        except (OSError, ValueError, KeyError):
            continue
    return out


def _port(spec: LaunchSpec) -> str:
    argv = list(spec.argv)
    return argv[argv.index("--master_port") + 1] if "--master_port" in argv else "29500"


def first_failure(statuses: dict[int, dict]) -> str | None:
    """One line on the rank that failed first (the earliest status file with a non-zero exit): the
    others usually died because DeepSpeed's launcher killed them after it."""
    bad = [s for s in statuses.values() if s.get("returncode") not in (0, None)]
    if not bad:
        return None
    s = min(bad, key=lambda d: (d.get("ended", float("inf")), d["rank"]))
    r, sig = s["rank"], s.get("signal")
    if sig == signal.SIGKILL:
        return (f"rank {r} failed first: killed by SIGKILL, usually the kernel's OOM killer when host RAM runs out "
                "(dmesg | grep -i oom); plan.json memory.cpu_total_bytes_per_node is what the plan needs per node")
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"rank {r} failed first: killed by {name}"
    return f"rank {r} failed first (exit {s['returncode']}); its 'error: rank {r}:' line above says why"


def run(spec: LaunchSpec, run_dir: Path, expected_ranks: list[int], log=print, owns_shm: bool = True) -> int:
    """``owns_shm``: this process hosts the job's master (single host, or no-ssh node 0) and may clear
    the job's shared-memory buffers."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if owns_shm:
        clear_shm_buffers(spec.master_addr, _port(spec))
    # the ranks' environment travels in the payload; the runner gets ours (what qwen_ds.launch.remote
    # checked DeepSpeed's exports against) plus a tag no runner exports, which marks this job's local
    # processes so that tests can prove none outlives it
    env = {**os.environ, "QWEN_DS_RUN_DIR": spec.payload.run_dir, LAUNCH_T0: f"{time.time():.3f}"}
    proc = subprocess.Popen(list(spec.argv), env=env, start_new_session=True)
    pgid = proc.pid
    stopping = {"signal": None}

    def on_signal(signum, _frame):
        stopping["signal"] = signum
        log(f"qwen-ds launch: got {signal.Signals(signum).name}, stopping every rank", file=sys.stderr)
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        _kill_group(pgid, GRACE_S if stopping["signal"] is None else 5)
        for s, h in old.items():
            signal.signal(s, h)
        if owns_shm:
            clear_shm_buffers(spec.master_addr, _port(spec))
    if stopping["signal"] is not None:
        return 128 + stopping["signal"]
    statuses = rank_statuses(run_dir)
    bad = {r: s for r, s in statuses.items() if s.get("returncode") != 0}
    missing = [r for r in expected_ranks if r not in statuses]
    if rc != 0:
        why = first_failure(statuses)
        if why:
            log(f"qwen-ds launch: {why}", file=sys.stderr)
        return rc if rc > 0 else 128 - rc
    if bad:
        r, s = sorted(bad.items())[0]
        log(f"qwen-ds launch: rank {r} failed (exit {s.get('returncode')}) though DeepSpeed's runner exited 0",
            file=sys.stderr)
        return 1
    if missing:
        log(f"qwen-ds launch: ranks {missing} never reported an exit status (a launcher or rank was killed); failing "
            "the job",
            file=sys.stderr)
        return 1
    return 0
