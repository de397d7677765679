"""Cold-process latency of `qwen-ds estimate` (issue #2 target: <= 0.4 s for Qwen3-Next-80B-A3B).

Runs the installed console script N times in fresh processes and reports min / median / max wall
time, and whether torch / deepspeed / transformers were imported on that path.
Usage: python benchmarks/cli_latency.py [--runs 10] [--out benchmarks/results/cli_latency_<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import statistics
import subprocess
import sys
import time

CMD = ["estimate", "--model", "Qwen3-Next-80B-A3B", "--gpu", "A100-80GB", "--nodes", "2", "--gpus-per-node", "8", "--json"]
PROBE = (
    "import sys\nfrom qwen_ds.cli import main\n"
    "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "heavy = [m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules]\n"
    "print('HEAVY=' + ','.join(heavy), file=sys.stderr)\n"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    exe = shutil.which("qwen-ds")
    argv = [exe, *CMD] if exe else [sys.executable, "-m", "qwen_ds.cli", *CMD]
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        assert p.returncode in (0, 3), p.stderr
    probe = subprocess.run([sys.executable, "-c", PROBE, *CMD], capture_output=True, text=True)
    heavy = probe.stderr.strip().splitlines()[-1].removeprefix("HEAVY=")
    report = (
        f"# qwen-ds estimate cold-process latency, {datetime.date.today()}\n\n"
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}\n"
        f"command: qwen-ds {' '.join(CMD)}\n\n"
        f"| runs | min s | median s | max s | heavy modules imported |\n|---|---|---|---|---|\n"
        f"| {args.runs} | {min(times):.3f} | {statistics.median(times):.3f} | {max(times):.3f} | {heavy or 'none'} |\n"
    )
    print(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(report)


if __name__ == "__main__":
    main()
