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

GRACE_S = 20


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


def run(spec: LaunchSpec, run_dir: Path, expected_ranks: list[int], log=print) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
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
    if stopping["signal"] is not None:
        return 128 + stopping["signal"]
    statuses = rank_statuses(run_dir)
    bad = {r: s for r, s in statuses.items() if s.get("returncode") != 0}
    missing = [r for r in expected_ranks if r not in statuses]
    if rc != 0:
        return rc if rc > 0 else 128 - rc
    if bad:
        r, s = sorted(bad.items())[0]
        log(f"qwen-ds launch: rank {r} failed (exit {s.get('returncode')}) though DeepSpeed's runner exited 0", file=sys.stderr)
        return 1
    if missing:
        log(f"qwen-ds launch: ranks {missing} never reported an exit status (a launcher or rank was killed); failing the job",
            file=sys.stderr)
        return 1
    return 0
