"""Planner vs stock DeepSpeed configs on GPUs (issue #7): tokens/s and MFU of
  - the planner's first choice (gen-config with the knobs left open, fixed global batch),
  - a stock ZeRO-3 config in the style users copy (LLaMA-Factory ds_z3_config as the HF Trainer
    fills it: micro-batch 1, 5e8 buckets, overlap_comm false, HF loss, checkpointing on),
  - DeepSpeed's defaults (ZeRO-3 with no tuning keys, micro-batch 1),
  - the planner's own grid: its top plans, measured, to see how good the ranking is.
All through `qwen-ds launch ... train` (built-in runtime, synthetic data, collective timing off).

python benchmarks/planner_vs_stock.py --out DIR [--model Qwen3-4B] [--gpus 2] [--seq 4096] [--global-batch 32]
    [--grid 6] [--pick diverse|top] [--select 0,1,..] [--steps 6] [--stock-steps 4] [--deadline 540] [--configs-only]
python benchmarks/planner_vs_stock.py --report-from A.jsonl,B.jsonl ...   (one report from runs of several calls)
The grid: `top` measures the planner's first N plans; `diverse` (default) its first plan of each kind (ZeRO-3 or
not x offload x checkpointing), then of each micro-batch, so the ranking is tested across plans that differ.
`--select` runs only those entries of the list (grid, then the stock configs) to split a matrix over device calls;
each run is appended to `planner_vs_stock_<gpu>_<date>.jsonl` as it ends.
Ends with `speedup_vs_stock: X`, `fraction_of_best: Y`, the rank correlation of predicted vs measured and
`max_speed_error_pct: Z` (largest |predicted - measured| / measured over the planner's plans; the stock configs'
predictions, for the same knobs, are shown beside them).
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
sys.path.insert(0, str(ROOT))


def qwen_ds(*args, timeout=None):
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def catalog_gpu() -> str:
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.lower()
    except FileNotFoundError:
        return "H100-SXM"
    return "H200" if "h200" in name else "H100-SXM" if "h100" in name else "A100-80GB"


def stock_config(kind: str, micro: int, ga: int, dp: int, h: int) -> dict:
    """LLaMA-Factory ds_z3_config as the HF Trainer fills it, or DeepSpeed's defaults."""
    batch = {"train_batch_size": micro * ga * dp, "train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": ga,
             "bf16": {"enabled": True}, "gradient_clipping": 1.0,
             "optimizer": {"type": "AdamW", "params": {"lr": 2e-5, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}}}
    if kind == "deepspeed-defaults":
        return {**batch, "zero_optimization": {"stage": 3}}
    return {**batch, "zero_allow_untested_optimizer": True, "zero_optimization": {
        "stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1_000_000_000,
        "reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 500_000_000,
        "stage3_param_persistence_threshold": 10 * h, "stage3_max_live_parameters": 1_000_000_000,
        "stage3_max_reuse_distance": 1_000_000_000, "stage3_gather_16bit_weights_on_model_save": True}}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    rank = lambda v: {i: r for r, (i, _) in enumerate(sorted(enumerate(v), key=lambda t: t[1]))}
    rx, ry = rank(xs), rank(ys)
    n = len(xs)
    return 1 - 6 * sum((rx[i] - ry[i]) ** 2 for i in range(n)) / (n * (n * n - 1))


def stock_plan(kind: str, global_batch: int, dp: int, hidden: int):
    """The knobs of a stock config as the speed model takes them (its buckets and overlap_comm; DeepSpeed's defaults
    for its defaults)."""
    from qwen_ds.knobs import Plan

    buckets = ({"reduce_bucket_size": 500_000_000, "prefetch_bucket_size": 500_000_000, "param_persistence_threshold": 10 * hidden}
               if kind == "stock-llamafactory-z3" else
               {"reduce_bucket_size": 500_000_000, "prefetch_bucket_size": 50_000_000, "param_persistence_threshold": 100_000})
    return Plan(zero_stage=3, micro_batch=1, grad_accum=global_batch // dp, checkpointing=True, loss="hf", overlap_comm=False,
                **buckets)


def row_plan(r: dict, hidden: int):
    """The plan a result row ran, from its name (planner rows) or its stock kind."""
    import re

    from qwen_ds.knobs import Plan

    if not r["name"].startswith("planner"):
        return stock_plan(r["name"], r["global_batch"], r["gpus"], hidden)
    m = re.match(r"planner #\d+: ZeRO-(\d)(?: \+ offload opt=(\w+) param=(\w+))?, mb (\d+) x ga (\d+), ckpt (\w+)", r["name"])
    z, oo, op, mb, ga, ck = m.groups()
    return Plan(zero_stage=int(z), offload_optimizer=oo or "none", offload_param=op or "none", micro_batch=int(mb),
                grad_accum=int(ga), checkpointing=ck == "True", loss="chunked")


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "-"
    return " | ".join(f"{pkg} {v(pkg)}" for pkg in ("torch", "deepspeed", "transformers", "torchao"))


def pick(accepted: list, n: int, how: str) -> list[tuple[int, object]]:
    """(rank in the planner's order, candidate): its first n, or its first of each kind, then of each micro-batch."""
    ranked = list(enumerate(accepted, 1))
    if how == "top":
        return ranked[:n]
    kind = lambda p: (p.zero_stage == 3, p.offload_optimizer, p.offload_param, p.checkpointing)
    chosen: list = []
    for key in (kind, lambda p: (*kind(p), p.micro_batch)):
        seen = {key(c.plan) for _, c in chosen}
        for rank, c in ranked:
            if len(chosen) < n and key(c.plan) not in seen:
                chosen.append((rank, c))
                seen.add(key(c.plan))
    return chosen


def measure(name: str, cfg_dir: Path, hostfile: Path, steps: int, timeout: float, stock: tuple[str, int] | None) -> dict:
    """One run. ``stock`` = (model, seq len): a stock config runs without a plan.json (launch and the runtime refuse
    a plan made for another config), as its users run it: HF loss, activation checkpointing on."""
    metrics = cfg_dir / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    plan = [] if stock else ["--plan", str(cfg_dir / "plan.json")]
    args = ["launch", "--hostfile", str(hostfile), "--config", str(cfg_dir / "ds_config.json"), *plan,
            "--master-port", "auto", "--run-dir", str(cfg_dir / "run"), "train", "--steps", str(steps),
            "--metrics-file", str(metrics), "--comm-profile-every", "0"]
    if stock:
        args += ["--model", stock[0], "--seq-len", str(stock[1]), "--loss", "hf", "--checkpointing", "on"]
    try:
        p = qwen_ds(*args, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": "timeout"}
    if p.returncode or not metrics.exists():
        tail = (p.stdout + p.stderr).strip().splitlines()[-6:]
        return {"name": name, "error": " | ".join(tail)[-400:]}
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = recs[2:] or recs[1:] or recs
    from qwen_ds.plandoc import read_plan_document

    mem = read_plan_document(str(cfg_dir / "plan.json")).memory
    return {"name": name, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady) if steady[0]["mfu"] is not None else None,
            "step_s": [r.get("step_s") for r in recs], "steps": len(recs),
            "peak_allocated": max(r["peak_allocated_bytes"] or 0 for r in steady),
            "peak_reserved": max(r.get("peak_reserved_bytes") or 0 for r in steady),
            "pred_allocated": mem.gpu_allocated_bytes, "pred_reserved": mem.gpu_reserved_bytes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--model", default="Qwen3-4B")
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--grid", type=int, default=6, help="how many of the planner's top plans to measure")
    ap.add_argument("--gpu", default="", help="catalog GPU name [from nvidia-smi]")
    ap.add_argument("--pick", choices=("diverse", "top"), default="diverse")
    ap.add_argument("--select", default="", help="comma-separated indices into the run list (grid, then stock)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--stock-steps", type=int, default=4)
    ap.add_argument("--deadline", type=float, default=540)
    ap.add_argument("--configs-only", action="store_true", help="write the configs, run nothing (no GPU needed)")
    ap.add_argument("--report-from", default="", help="comma-separated jsonl files of earlier calls: write the report only")
    args = ap.parse_args()
    t0 = time.time()
    from qwen_ds.hardware import Cluster, get_gpu
    from qwen_ds.models import load_model
    from qwen_ds.knobs import Plan, Workload
    from qwen_ds.planner import Constraints, search
    from qwen_ds.planner.throughput import step_time

    if args.report_from:  # earlier calls' rows, each also predicted by the model as it is now
        rows = [json.loads(line) for f in args.report_from.split(",") for line in Path(f).read_text().splitlines() if line]
        gpu = rows[0].get("gpu", "H200") if rows else "H200"
        spec = load_model(args.model)
        for r in rows:
            r["predicted_now"] = step_time(spec, Cluster(get_gpu(gpu), 1, args.gpus), Workload(seq_len=args.seq),
                                           row_plan(r, spec.hidden_size)).tokens_per_s
        report(rows, args, gpu)
        return

    gpu = args.gpu or catalog_gpu()
    work = Path("/tmp/qwen-ds-pvs")
    work.mkdir(parents=True, exist_ok=True)
    hostfile = work / "hostfile"
    hostfile.write_text(f"localhost slots={args.gpus}\n")
    spec = load_model(args.model)
    res = search(spec, Cluster(get_gpu(gpu), 1, args.gpus), Workload(seq_len=args.seq), Plan(loss="chunked"),
                 Constraints(global_batch=args.global_batch))
    runs = []  # (name, dir, predicted tokens/s)
    for i, cand in pick(res.accepted, args.grid, args.pick):
        p = cand.plan
        d = work / f"grid{i}"
        g = qwen_ds("gen-config", "-m", args.model, "-g", gpu, "--hostfile", str(hostfile), "--seq-len", str(args.seq), "--loss", "chunked",
                    "--zero", str(p.zero_stage), "--offload-optimizer", p.offload_optimizer, "--offload-param", p.offload_param,
                    "--micro-batch", str(p.micro_batch), "--grad-accum", str(p.grad_accum), "--tp", "1", "--pp", "1",
                    "--checkpointing" if p.checkpointing else "--no-checkpointing", "-o", str(d), "--force")
        if g.returncode == 0:
            runs.append((f"planner #{i}: {cand.family}, mb {p.micro_batch} x ga {p.grad_accum}, ckpt {p.checkpointing}", d,
                         cand.time.tokens_per_s))
    dp = args.gpus
    for kind in ("stock-llamafactory-z3", "deepspeed-defaults"):
        d = work / kind
        g = qwen_ds("gen-config", "-m", args.model, "-g", gpu, "--hostfile", str(hostfile), "--seq-len", str(args.seq), "--loss", "hf",
                    "--zero", "3", "--offload-optimizer", "none", "--offload-param", "none", "--micro-batch", "1",
                    "--grad-accum", str(args.global_batch // dp), "--tp", "1", "--pp", "1", "--checkpointing", "-o", str(d), "--force")
        if g.returncode != 0:
            continue
        (d / "ds_config.json").write_text(json.dumps(stock_config(kind, 1, args.global_batch // dp, dp, spec.hidden_size), indent=2))
        # the speed model for the same knobs, buckets and overlap_comm
        same = stock_plan(kind, args.global_batch, dp, spec.hidden_size)
        pred = step_time(spec, Cluster(get_gpu(gpu), 1, args.gpus), Workload(seq_len=args.seq), same).tokens_per_s
        runs.append((kind, d, pred))
    if args.configs_only:
        for i, (name, d, pred) in enumerate(runs):
            print(f"[{i}] {name}: {d}/ds_config.json predicted tokens/s {pred:.0f}")
        return
    if args.select:
        runs = [runs[int(i)] for i in args.select.split(",")]
    date = datetime.date.today().isoformat()
    jsonl = Path(args.out) / f"planner_vs_stock_{gpu.lower().replace('-', '')}_{date}.jsonl"
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, d, pred in runs:
        left = args.deadline - (time.time() - t0)
        if left < 60:
            rows.append({"name": name, "error": "not run (time)"})
            continue
        stock = not name.startswith("planner")
        r = measure(name, d, hostfile, args.stock_steps if stock else args.steps, left - 5,
                    (args.model, args.seq) if stock else None)
        r.update(predicted_tokens_per_s=pred, gpu=gpu, model=args.model, seq=args.seq, global_batch=args.global_batch,
                 gpus=args.gpus, versions=versions(), ds_config=json.loads((d / "ds_config.json").read_text()))
        rows.append(r)
        with jsonl.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        print(json.dumps({k: v for k, v in r.items() if k != "ds_config"}), flush=True)
    report(rows, args, gpu)


def report(rows: list[dict], args, gpu: str) -> None:
    from qwen_ds.units import GIB

    import torch

    ok = [r for r in rows if "tokens_per_s" in r]
    grid = [r for r in ok if r["name"].startswith("planner")]
    stock = next((r for r in ok if r["name"] == "stock-llamafactory-z3"), None)
    best = max((r["tokens_per_s"] for r in grid), default=None)
    first = next((r for r in grid if r["name"].startswith("planner #1:")), None)
    date = datetime.date.today().isoformat()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else gpu
    vers = next((r["versions"] for r in rows if r.get("versions")), versions())
    lines = [f"# Planner vs stock configs, {date}", "",
             f"GPU: {device} x {args.gpus} | {vers} | model {args.model} | seq {args.seq} | "
             f"global batch {args.global_batch} sequences", "",
             "| run | predicted tokens/s | measured tokens/s | error | MFU | peak allocated GiB (predicted) "
             "| peak reserved GiB (predicted) | predicted when run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['name']} | | | | | | {r.get('error', '')[:120]} | |")
            continue
        when = r.get("predicted_tokens_per_s")
        if "predicted_now" in r:  # --report-from: the model as it is now; the prediction made before the run beside it
            r["predicted_tokens_per_s"] = r["predicted_now"]
        pred = r.get("predicted_tokens_per_s")
        err = f"{100 * (pred - r['tokens_per_s']) / r['tokens_per_s']:+.1f}%" if pred else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        mem = lambda k: (f"{r['peak_' + k] / GIB:.2f}" + (f" ({r['pred_' + k] / GIB:.2f})" if r.get("pred_" + k) else "")
                         if r.get("peak_" + k) else "-")
        lines.append(f"| {r['name']} | {f'{pred:.0f}' if pred else '-'} | {r['tokens_per_s']:.0f} | {err} | {mfu} | "
                     f"{mem('allocated')} | {mem('reserved')} | {f'{when:.0f}' if when else '-'} |")
    if first and stock:
        lines += ["", f"speedup_vs_stock: {first['tokens_per_s'] / stock['tokens_per_s']:.2f}"]
    if first and best:
        lines.append(f"fraction_of_best: {first['tokens_per_s'] / best:.2f}")
    rho = spearman([r["predicted_tokens_per_s"] for r in grid], [r["tokens_per_s"] for r in grid])
    if rho is not None:
        lines.append(f"rank_correlation_predicted_vs_measured: {rho:.2f}")
    errors = [abs(r["predicted_tokens_per_s"] - r["tokens_per_s"]) / r["tokens_per_s"] for r in grid
              if r.get("predicted_tokens_per_s")]
    if errors:  # issue #16: the largest |predicted - measured| / measured over the plans it predicted
        lines.append(f"max_speed_error_pct: {100 * max(errors):.1f}")
    path = Path(args.out) / f"planner_vs_stock_{gpu.lower().replace('-', '')}_{date}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
