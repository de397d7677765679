"""Planner latency (issue #4 target: >= 1,000 candidates for Qwen3-Next-80B-A3B in <= 1 s here).

Times `search` in-process and `qwen-ds plan` as a cold process, for the widest search
(NVMe, TP and PP allowed, a global batch that leaves micro-batch and grad-accum free).
Usage: python benchmarks/planner_latency.py [--out benchmarks/results/planner_latency_<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwen_ds.hardware import Cluster, get_gpu  # noqa: E402
from qwen_ds.models import load_model  # noqa: E402
from qwen_ds.knobs import Plan, Workload  # noqa: E402
from qwen_ds.planner import Constraints, search  # noqa: E402

CASES = [
    ("Qwen3-Next-80B-A3B", "A100-80GB", 8, 8, dict(allow_nvme=True, train_tp=True, train_pp=True, global_batch=2048)),
    ("Qwen3-Next-80B-A3B", "H100-SXM", 4, 8, dict(allow_nvme=True, train_tp=True, train_pp=True)),
    ("Qwen3-8B", "A100-80GB", 2, 8, dict(allow_nvme=True, train_tp=True, train_pp=True, global_batch=512)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    for model, gpu, nodes, gpn, cons in CASES:
        spec, cluster = load_model(model), Cluster(get_gpu(gpu), nodes, gpn)
        search(spec, cluster, Workload(seq_len=4096), Plan(loss="chunked"), Constraints(**cons))  # warm caches
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            res = search(spec, cluster, Workload(seq_len=4096), Plan(loss="chunked"), Constraints(**cons))
            best = min(best, time.perf_counter() - t0)
        rows.append((model, f"{nodes}x{gpn} {gpu}", res.considered, len(res.accepted), best))
    argv = [sys.executable, "-m", "qwen_ds.cli", "plan", "-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", "--nodes", "8",
            "--gpus-per-node", "8", "--allow-nvme", "--allow-tp", "--allow-pp", "--global-batch", "2048", "--json"]
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=True)
    cold = time.perf_counter() - t0
    lines = [f"# Planner latency, {datetime.date.today()}", "",
             f"machine: {platform.machine()}, Python {platform.python_version()}, 2 cores", "",
             "| model | cluster | candidates | fit | search s (best of 3) |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {c} | {n} | {a} | {t:.3f} |" for m, c, n, a, t in rows]
    lines += ["", f"cold process `qwen-ds plan` (first case, --json): {cold:.3f} s"]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
