"""Trainer speed on a GPU (issue #15): tokens/s, MFU, peak memory, startup and the per-step loss of named runs of
`qwen-ds launch ... train` on one node, each a gen-config plan plus trainer flags. Each run's line is appended to
DIR/trainer_speed.jsonl as soon as it ends (a killed matrix keeps the runs it finished).

python benchmarks/trainer_speed.py --out DIR [--runs NAME,NAME,...] [--model Qwen3-4B] [--timeout 300] [--steps N]

Runs share Inductor's on-disk cache: a compiled run's first_step_s depends on the runs before it (the order is
the --runs order, kept in the output file).

Runs (--runs picks, in the order given):
  bf16-eager      the planner's plan for --global-batch 16, --compile off (the #15 baseline)
  bf16-compiled   the same plan, decoder layers compiled; profiles step 4 (--profile)
  fp8-compiled    the same plan in FP8 (torchao tensorwise), compiled; profiles step 4
  fp8-head        the FP8 plan with the output head in float8 too (train --fp8-head)
  bf16-gb4        ZeRO-0 micro-batch 2 x grad-accum 2, compiled, 50 steps at lr 3e-4 (the FP8 reference curve)
  fp8-gb4         the same plan in FP8 (torchao tensorwise), compiled, 50 steps
  fp8-head-gb4    fp8-gb4 with the head in float8
  bf16-gb4-lr1e-3, fp8-gb4-lr1e-3   the two above at lr 1e-3 (the loss falls further in 50 steps)
  fp8-gb4-eager   FP8 without compile (what compile buys FP8), 12 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_startup import qwen_ds, versions  # noqa: E402

SHORT = ("--lr", "3e-4", "--warmup-steps", "5", "--total-steps", "50")
FAST = ("--lr", "1e-3", "--warmup-steps", "5", "--total-steps", "50")
GB4 = ("--global-batch", "4", "--micro-batch", "2", "--zero", "0")
RUNS = {  # name: (gen-config flags, train flags, steps)
    "bf16-eager": (("--global-batch", "16"), ("--compile", "off"), 6),
    "bf16-compiled": (("--global-batch", "16"), ("--compile", "on", "--profile-step", "4"), 6),
    "fp8-compiled": (("--global-batch", "16", "--precision", "fp8"), ("--compile", "on", "--profile-step", "4"), 6),
    "fp8-head": (("--global-batch", "16", "--precision", "fp8"), ("--compile", "on", "--fp8-head"), 6),
    "bf16-gb4": ((*GB4, *SHORT), ("--compile", "on"), 50),
    "fp8-head-gb4": ((*GB4, "--precision", "fp8", *SHORT), ("--compile", "on", "--fp8-head"), 50),
    "fp8-gb4": ((*GB4, "--precision", "fp8", *SHORT), ("--compile", "on"), 50),
    "bf16-gb4-lr1e-3": ((*GB4, *FAST), ("--compile", "on"), 50),
    "fp8-gb4-lr1e-3": ((*GB4, "--precision", "fp8", *FAST), ("--compile", "on"), 50),
    "fp8-gb4-eager": ((*GB4, "--precision", "fp8", *SHORT), ("--compile", "off"), 12),
}


def run_one(name: str, args, work: Path, out: Path, hostfile: Path, base: dict) -> dict:
    gen, train, steps = RUNS[name]
    steps = args.steps or steps
    cfg = work / name
    g = qwen_ds("gen-config", "-m", args.model, "-g", args.gpu, "--hostfile", str(hostfile), "--seq-len",
                str(args.seq), "--loss", "chunked", *gen, "-o", str(cfg), "--force")
    print(g.stdout + g.stderr, flush=True)
    if g.returncode:
        return {**base, "run": name, "rc": f"gen-config {g.returncode}"}
    plan = json.loads((cfg / "plan.json").read_text())
    metrics = work / f"{name}.jsonl"
    metrics.unlink(missing_ok=True)
    extra = ["--profile", str(out / f"trainer_profile_{name}.md")] if "--profile-step" in train else []
    t0 = time.time()
    try:
        p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--plan",
                    str(cfg / "plan.json"), "--master-port", "auto", "--run-dir", str(work / f"run-{name}"), "train",
                    "--steps", str(steps), "--metrics-file", str(metrics), "--comm-profile-every", "0", *train,
                    *extra, timeout=args.timeout)
        wall, rc, log = time.time() - t0, p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as exc:  # the ranks run in their own session: end them too
        streams = (exc.stdout, exc.stderr)  # bytes on POSIX even with text=True
        log = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in streams)
        wall, rc = time.time() - t0, "timeout"
        subprocess.run(["pkill", "-9", "-f", "qwen_ds.launch.rank|qwen_ds.runtime|deepspeed.launcher"])
        time.sleep(5)
    print(log[-2500:], flush=True)
    (out / f"trainer_speed_{name}.log").write_text(log[-20000:])
    recs = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steady = [r for r in recs[1:] if not r.get("torch_profiled")]  # step 1 compiles: never its speed
    first = recs[0] if recs else {}
    return {**base, "run": name, "rc": rc, "plan": plan["plan"], "gen_config": list(gen), "train_flags": list(train),
            "launch_wall_s": round(wall, 1), "startup_s": first.get("startup_s"),
            "first_step_s": first.get("first_step_s"), "compiled_layers": first.get("compiled_layers"),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None,
            "mfu": statistics.median(r["mfu"] for r in steady) if steady and steady[0]["mfu"] is not None else None,
            "peak_allocated_bytes": max((r["peak_allocated_bytes"] or 0) for r in recs) if recs else None,
            "peak_reserved_bytes": max((r.get("peak_reserved_bytes") or 0) for r in recs) if recs else None,
            "predicted_allocated_bytes": plan["memory"]["gpu_allocated_bytes"],
            "losses": [r["loss"] for r in recs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--runs", default="bf16-compiled,bf16-gb4,fp8-gb4")
    ap.add_argument("--model", default="Qwen3-4B")
    ap.add_argument("--gpu", default="H200", help="catalog name for gen-config")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--steps", type=int, default=0, help="override each run's steps")
    args = ap.parse_args()
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; known: {', '.join(RUNS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/qwen-ds-speed")
    work.mkdir(parents=True, exist_ok=True)
    hostfile = work / "hostfile"
    hostfile.write_text("localhost slots=1\n")
    base = {"date": time.strftime("%Y-%m-%d"), "model": args.model, "seq": args.seq, "versions": versions()}
    for name in names:
        row = run_one(name, args, work, out, hostfile, base)
        with (out / "trainer_speed.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("plan", "versions", "losses")}), flush=True)


if __name__ == "__main__":
    main()
