"""Trainer startup on a GPU (issue #15): seconds from `qwen-ds launch` to step 1 and the first step's time, for the
planner's plan of a model on one node, run twice: the first run compiles DeepSpeed's ops (a fresh machine), the
second finds them cached. Also tokens/s, MFU and peak memory of the steps after the first, against the plan.

python benchmarks/trainer_startup.py --out DIR [--model Qwen3-4B] [--gpus 1] [--seq 4096] [--global-batch 16]
    [--steps 6] [--runs 2] [--timeout 420]
Writes DIR/trainer_startup.jsonl (one line a run) and prints `startup_s: X` (the cached run's).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def qwen_ds(*args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def versions() -> dict:
    out = {}
    for name in ("torch", "deepspeed", "transformers", "torchao"):
        p = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__version__)"], capture_output=True,
                           text=True)
        out[name] = p.stdout.strip().splitlines()[-1] if p.returncode == 0 and p.stdout.strip() else None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True)
        out["gpu"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except FileNotFoundError:
        out["gpu"] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--model", default="Qwen3-4B")
    ap.add_argument("--gpu", default="H200", help="catalog name for gen-config")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=420)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/qwen-ds-startup")
    work.mkdir(parents=True, exist_ok=True)
    hostfile = work / "hostfile"
    hostfile.write_text(f"localhost slots={args.gpus}\n")
    cfg = work / "cfg"
    g = qwen_ds("gen-config", "-m", args.model, "-g", args.gpu, "--hostfile", str(hostfile), "--seq-len", str(args.seq),
                "--global-batch", str(args.global_batch), "--loss", "chunked", "-o", str(cfg), "--force")
    print(g.stdout + g.stderr, flush=True)
    if g.returncode:
        raise SystemExit(g.returncode)
    plan = json.loads((cfg / "plan.json").read_text())
    base = {"date": datetime.date.today().isoformat(), "model": args.model, "seq": args.seq,
            "global_batch": args.global_batch, "plan": plan["plan"], "versions": versions(),
            "predicted_allocated_bytes": plan["memory"]["gpu_allocated_bytes"]}
    cached = None
    for run in range(args.runs):
        metrics = work / f"metrics{run}.jsonl"
        metrics.unlink(missing_ok=True)
        t0 = time.time()
        try:
            p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--plan",
                        str(cfg / "plan.json"), "--master-port", "auto", "--run-dir", str(work / f"run{run}"), "train",
                        "--steps", str(args.steps), "--metrics-file", str(metrics), "--comm-profile-every", "0",
                        timeout=args.timeout)
            wall, rc, log = time.time() - t0, p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:  # the ranks run in their own session: end them too
            wall, rc, log = time.time() - t0, "timeout", str(exc.stdout or "")
            subprocess.run(["pkill", "-9", "-f", "qwen_ds.launch.rank|qwen_ds.runtime|deepspeed.launcher"])
            time.sleep(5)
        print(log[-3000:], flush=True)
        recs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        steady = recs[1:] or recs
        row = {**base, "run": run, "rc": rc, "launch_wall_s": round(wall, 1),
               "startup_s": recs[0].get("startup_s") if recs else None,
               "first_step_s": recs[0].get("first_step_s") if recs else None,
               "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None,
               "mfu": statistics.median(r["mfu"] for r in steady) if steady and steady[0]["mfu"] is not None else None,
               "peak_allocated_bytes": max((r["peak_allocated_bytes"] or 0) for r in recs) if recs else None,
               "op_builds": [ln.split("building DeepSpeed op", 1)[1][:120] for ln in log.splitlines()
                             if "building DeepSpeed op" in ln]}
        with (out / "trainer_startup.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("plan", "versions")}), flush=True)
        if row["startup_s"] is not None:
            cached = row["startup_s"]
    print(f"startup_s: {cached}")


if __name__ == "__main__":
    main()
