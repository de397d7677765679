"""Estimator accuracy under real DeepSpeed training on GPUs (issue #7): peak allocated / reserved of
the built-in runtime, launched with `qwen-ds launch`, against `qwen-ds estimate` for the same plan.

For each case: gen-config with every knob pinned (the plan.json carries the prediction), launch
`train --steps N` on 1 or 2 local GPUs, read rank 0's per-step peaks (steps >= 2: the optimizer
states exist), compare. Cases run in priority order and stop before --deadline seconds, so one
device call always ends with a result file.

python benchmarks/memory_accuracy.py --out DIR [--deadline 520] [--gpus 2] [--steps 3]
python benchmarks/memory_accuracy.py --gpus 1 --only PEFT --name peft_memory   (issue #17's PEFT cases)
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

# name, preset, layers (None = full), gpus, zero, offload_optimizer, micro, seq, checkpointing, loss[, offload_param
# [, finetune]]: finetune lora / qlora is r16 on all-linear (peft), QLoRA's base in NF4 (bitsandbytes)
CASES = [
    ("q0.6b-z3-ckpt-chunked", "Qwen3-0.6B", None, 2, 3, "none", 2, 2048, True, "chunked"),
    ("q4b-z3-ckpt-chunked-s4096", "Qwen3-4B", None, 2, 3, "none", 2, 4096, True, "chunked"),
    ("q0.6b-z2-nockpt-chunked", "Qwen3-0.6B", None, 2, 2, "none", 2, 2048, False, "chunked"),
    ("q1.7b-z3-ckpt-hf-s4096", "Qwen3-1.7B", None, 2, 3, "none", 1, 4096, True, "hf"),
    ("q0.6b-z1-nockpt-hf", "Qwen3-0.6B", None, 2, 1, "none", 4, 1024, False, "hf"),
    ("q4b-z3-nockpt-hf", "Qwen3-4B", None, 2, 3, "none", 1, 4096, False, "hf"),
    ("q1.7b-z2-ckpt-chunked", "Qwen3-1.7B", None, 2, 2, "none", 2, 2048, True, "chunked"),
    ("q30ba3b-L8-z3-ckpt-chunked", "Qwen3-30B-A3B", 8, 2, 3, "none", 1, 2048, True, "chunked"),
    ("q1.7b-z1-nockpt-chunked-1gpu", "Qwen3-1.7B", None, 1, 1, "none", 1, 2048, False, "chunked"),
    ("q0.6b-z0-nockpt-hf-1gpu", "Qwen3-0.6B", None, 1, 0, "none", 2, 2048, False, "hf"),
    ("q8b-z3-ckpt-chunked", "Qwen3-8B", None, 2, 3, "none", 1, 4096, True, "chunked"),
    ("q4b-z3-offload-ckpt-chunked", "Qwen3-4B", None, 2, 3, "cpu", 2, 4096, True, "chunked"),
    # second half of the matrix: more (micro-batch, seq) points, offload, 1 GPU, MoE and Qwen3-Next
    ("q1.7b-z3-nockpt-chunked-s1024", "Qwen3-1.7B", None, 2, 3, "none", 4, 1024, False, "chunked"),
    ("q1.7b-z3-ckpt-chunked-s8192", "Qwen3-1.7B", None, 2, 3, "none", 1, 8192, True, "chunked"),
    ("q4b-z2-ckpt-hf", "Qwen3-4B", None, 2, 2, "none", 1, 4096, True, "hf"),
    ("q4b-z1-ckpt-chunked", "Qwen3-4B", None, 2, 1, "none", 2, 2048, True, "chunked"),
    ("q0.6b-z3-offload-nockpt-hf", "Qwen3-0.6B", None, 2, 3, "cpu", 2, 2048, False, "hf"),
    ("q1.7b-z2-offload-ckpt-chunked", "Qwen3-1.7B", None, 2, 2, "cpu", 2, 4096, True, "chunked"),
    ("q0.6b-z3-ckpt-chunked-1gpu", "Qwen3-0.6B", None, 1, 3, "none", 4, 2048, True, "chunked"),
    ("q1.7b-z2-ckpt-hf-1gpu", "Qwen3-1.7B", None, 1, 2, "none", 2, 4096, True, "hf"),
    ("q4b-z3-ckpt-chunked-1gpu", "Qwen3-4B", None, 1, 3, "none", 1, 4096, True, "chunked"),
    ("q30ba3b-L8-z2-nockpt-chunked", "Qwen3-30B-A3B", 8, 2, 2, "none", 1, 2048, False, "chunked"),
    ("qnext-L4-z3-ckpt-chunked", "Qwen3-Next-80B-A3B", 4, 2, 3, "none", 1, 2048, True, "chunked"),
    ("qnext-L4-z3-nockpt-chunked-s1024", "Qwen3-Next-80B-A3B", 4, 2, 3, "none", 1, 1024, False, "chunked"),
    ("q8b-z3-offload-ckpt-hf", "Qwen3-8B", None, 2, 3, "cpu", 1, 4096, True, "hf"),
    ("llama8b-L8-z2-nockpt-hf", "Llama-3.1-8B", 8, 2, 2, "none", 1, 2048, False, "hf"),
    # issue #16, one GPU: ZeRO-3 parameter offload, Qwen3-Next on transformers' torch Gated-DeltaNet path, a large
    # eager no-checkpointing run (activation churn for the default allocator)
    ("q1.7b-z3-poff-ckpt-hf-1gpu", "Qwen3-1.7B", None, 1, 3, "cpu", 1, 4096, True, "hf", "cpu"),
    ("q1.7b-z3-poff-nockpt-chunked-1gpu", "Qwen3-1.7B", None, 1, 3, "cpu", 2, 4096, False, "chunked", "cpu"),
    ("q4b-z3-poff-optgpu-ckpt-chunked-1gpu", "Qwen3-4B", None, 1, 3, "none", 4, 4096, True, "chunked", "cpu"),
    ("qnext-L2-z3-nockpt-hf-s4096-1gpu", "Qwen3-Next-80B-A3B", 2, 1, 3, "none", 1, 4096, False, "hf"),
    ("qnext-L2-z3-ckpt-chunked-s4096-1gpu", "Qwen3-Next-80B-A3B", 2, 1, 3, "none", 2, 4096, True, "chunked"),
    ("qnext-L4-z3-ckpt-chunked-1gpu", "Qwen3-Next-80B-A3B", 4, 1, 3, "none", 1, 2048, True, "chunked"),
    ("q4b-z0-nockpt-chunked-s4096-1gpu", "Qwen3-4B", None, 1, 0, "none", 1, 4096, False, "chunked"),
    # issue #17, one GPU: LoRA under ZeRO-2 and ZeRO-3, QLoRA, LoRA on the MoE at reduced depth (--only PEFT)
    ("q8b-lora-z2-ckpt-chunked-1gpu", "Qwen3-8B", None, 1, 2, "none", 2, 4096, True, "chunked", "none", "lora"),
    ("q8b-lora-z3-ckpt-chunked-1gpu", "Qwen3-8B", None, 1, 3, "none", 2, 4096, True, "chunked", "none", "lora"),
    ("q8b-qlora-z2-ckpt-chunked-1gpu", "Qwen3-8B", None, 1, 2, "none", 2, 4096, True, "chunked", "none", "qlora"),
    ("q30ba3b-L8-lora-z3-ckpt-chunked-1gpu", "Qwen3-30B-A3B", 8, 1, 3, "none", 1, 4096, True, "chunked", "none",
     "lora"),
    ("q8b-lora-z2-nockpt-hf-1gpu", "Qwen3-8B", None, 1, 2, "none", 1, 2048, False, "hf", "none", "lora"),
]
PEFT = [c[0] for c in CASES if len(c) > 11 and c[11] != "full"]


def catalog_gpu() -> str:
    name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.lower()
    return "H200" if "h200" in name else "H100-SXM" if "h100" in name else "A100-80GB"


def qwen_ds(*args, timeout=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def run_case(case, work: Path, gpu: str, steps: int, timeout: float, include: str | None = None,
             allocator: str = "expandable") -> dict:
    name, preset, layers, gpus, zero, oo, micro, seq, ckpt, loss, *rest = case
    op = rest[0] if rest else "none"
    finetune = rest[1] if len(rest) > 1 else "full"
    from qwen_ds.models import load_model
    from qwen_ds.plandoc import read_plan_document

    spec = load_model(preset)
    model_arg = preset
    if layers:
        cfgfile = work / f"{name}-config.json"
        cfgfile.write_text(json.dumps({**spec.config, "num_hidden_layers": layers}))
        model_arg = str(cfgfile)
    hf = work / f"hostfile-{gpus}"
    hf.write_text(f"localhost slots={gpus}\n")
    launch_hf = hf
    if include:  # a 1-GPU case pinned to one GPU of a 2-GPU host, so two can run side by side
        launch_hf = work / "hostfile-2"
        launch_hf.write_text("localhost slots=2\n")
    out = work / name
    p = qwen_ds("gen-config", "-m", model_arg, "-g", gpu, "--hostfile", str(hf), "--zero", str(zero), "--offload-optimizer", oo,
                "--offload-param", op, "--micro-batch", str(micro), "--grad-accum", "1",
                "--checkpointing" if ckpt else "--no-checkpointing", "--tp", "1", "--pp", "1", "--seq-len", str(seq), "--loss", loss,
                "--precision", "bf16", "--allocator", allocator, "--finetune", finetune, "-o", str(out), "--force")
    if p.returncode != 0:
        return {"case": name, "error": "gen-config: " + p.stderr.strip()[-400:]}
    plan = read_plan_document(str(out / "plan.json"))
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    t0 = time.time()
    try:
        extra = ["--include", include] if include else []
        if allocator == "default":  # torch's default segments, as a plain deepspeed / HF Trainer launch runs
            extra += ["--env", "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:False"]
        p = qwen_ds("launch", "--hostfile", str(launch_hf), "--config", str(out / "ds_config.json"), *extra,
                    "--master-port", "auto", "--run-dir", str(out / "run"), "train", "--plan", str(out / "plan.json"),
                    "--steps", str(steps), "--metrics-file", str(metrics), "--comm-profile-every", "0",
                    # eager layers: the plan's activations are for transformers' kernels (gen-config --kernels hf)
                    "--compile", "off", timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": name, "error": f"timeout after {timeout:.0f} s"}
    wall = time.time() - t0
    mem = plan.memory
    rec = {"case": name, "model": spec.name if not layers else f"{spec.name}-L{layers}", "gpus": gpus, "zero": zero,
           "offload_optimizer": oo, "offload_param": op, "finetune": finetune, "allocator": allocator, "micro_batch": micro, "seq_len": seq, "checkpointing": ckpt, "loss": loss,
           "pred_allocated": mem.gpu_allocated_bytes, "pred_reserved": mem.gpu_reserved_bytes, "pred_total": mem.gpu_total_bytes,
           "pred_terms": mem.terms, "wall_s": round(wall, 1)}
    if p.returncode != 0 or not metrics.exists():
        tail = (p.stdout + p.stderr).strip().splitlines()[-12:]
        oom = any("OutOfMemory" in line or "out of memory" in line for line in tail)
        return {**rec, "error": ("OOM: " if oom else f"exit {p.returncode}: ") + " | ".join(tail)[-700:]}
    steps_rec = [json.loads(line) for line in metrics.read_text().splitlines()]
    steady = [s for s in steps_rec if s["step"] >= 2] or steps_rec
    rec.update(
        meas_allocated=max(s["peak_allocated_bytes"] for s in steady), meas_reserved=max(s["peak_reserved_bytes"] for s in steady),
        step1_allocated=steps_rec[0]["peak_allocated_bytes"], tokens_per_s=statistics.median(s["tokens_per_s"] for s in steady),
        mfu=statistics.median(s["mfu"] for s in steady) if steady[0]["mfu"] is not None else None,
        comm_share=statistics.median(s["comm_share"] for s in steady) if steady[0]["comm_share"] is not None else None,
        loss_first=steps_rec[0]["loss"], loss_last=steps_rec[-1]["loss"])
    rec["err_allocated_pct"] = round(100 * (rec["pred_allocated"] - rec["meas_allocated"]) / rec["meas_allocated"], 2)
    rec["err_reserved_pct"] = round(100 * (rec["pred_reserved"] - rec["meas_reserved"]) / rec["meas_reserved"], 2)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--deadline", type=float, default=520)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated case names; PEFT: issue #17's LoRA / QLoRA cases")
    ap.add_argument("--name", default="memory_accuracy", help="result file stem: NAME_<gpu>_<date>.{md,jsonl}")
    ap.add_argument("--skip", type=int, default=0, help="skip the first N cases (continue a matrix in a second call)")
    ap.add_argument("--allocator", choices=("expandable", "default"), default="expandable",
                    help="the CUDA allocator the cases run with (and gen-config --allocator plans for): default runs "
                         "without expandable segments, as a plain deepspeed / HF Trainer launch does (issue #16)")
    args = ap.parse_args()
    start = time.time()
    gpu = catalog_gpu()
    work = Path("/tmp/qwen-ds-memacc")
    work.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    tag = f"{gpu.lower().replace('-', '')}_{date}" + ("_default-allocator" if args.allocator == "default" else "")
    jsonl = out_dir / f"{args.name}_{tag}.jsonl"
    rows = []
    only = [n for part in args.only.split(",") if part for n in (PEFT if part == "PEFT" else [part])]
    cases = [c for c in CASES if not only or c[0] in only]
    cases = cases[args.skip:]
    pending_1gpu = [c for c in cases if c[3] == 1] if args.gpus >= 2 else []
    from concurrent.futures import ThreadPoolExecutor

    def record(rec: dict) -> None:
        rows.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "pred_terms"}), flush=True)
        with jsonl.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")

    for case in cases:
        left = args.deadline - (time.time() - start)
        if case[3] > args.gpus or left < 60:
            rows.append({"case": case[0], "error": "not run (GPUs or time)"})
            continue
        if case in pending_1gpu:
            pair = pending_1gpu[:2]
            if case is not pair[0]:
                continue  # run with its pair
            del pending_1gpu[:2]
            with ThreadPoolExecutor(2) as pool:  # two 1-GPU cases side by side, one GPU each
                futs = [pool.submit(run_case, c, work, gpu, args.steps, left - 10, f"localhost:{i}", args.allocator)
                        for i, c in enumerate(pair)]
                for f in futs:
                    record(f.result())
            continue
        record(run_case(case, work, gpu, args.steps, timeout=left - 10, allocator=args.allocator))
    write_report(rows, out_dir / f"{args.name}_{tag}.md", gpu)


def write_report(rows: list[dict], path: Path, gpu: str) -> None:
    import torch
    import transformers

    try:
        import deepspeed

        dsv = deepspeed.__version__
    except ImportError:
        dsv = "?"
    ok = [r for r in rows if "meas_allocated" in r]
    lines = [f"# Estimator accuracy under DeepSpeed training, {datetime.date.today()}", "",
             f"GPU: {torch.cuda.get_device_name()} ({gpu}) | torch {torch.__version__} | CUDA {torch.version.cuda} | "
             f"deepspeed {dsv} | transformers {transformers.__version__}", "",
             "Built-in runtime (`qwen-ds launch ... train`), bf16, AdamW, synthetic data; measured = rank 0's "
             "torch.cuda.max_memory_allocated / max_memory_reserved over steps >= 2; predicted = plan.json memory "
             "(gpu_allocated_bytes / gpu_reserved_bytes) from gen-config for the same plan. Configs: benchmarks/memory_accuracy.py CASES.", "",
             "| case | GPUs | ZeRO | offload | mb | seq | ckpt | loss | pred alloc GiB | meas alloc GiB | err % | pred resv GiB | meas resv GiB | err % | tokens/s | MFU | comm share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    from qwen_ds.units import GIB as g
    for r in rows:
        if "meas_allocated" not in r:
            lines.append(f"| {r['case']} | | | | | | | | | | | | | | | | {r.get('error', '')[:160]} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        cs = f"{100 * r['comm_share']:.0f}%" if r.get("comm_share") is not None else "-"
        lines.append(f"| {r['case']} | {r['gpus']} | {r['zero']} | {r['offload_optimizer']}{'/p:' + r['offload_param'] if r.get('offload_param', 'none') != 'none' else ''} | {r['micro_batch']} | {r['seq_len']} | "
                     f"{r['checkpointing']} | {r['loss']} | {r['pred_allocated'] / g:.2f} | {r['meas_allocated'] / g:.2f} | "
                     f"{r['err_allocated_pct']:+.1f} | {r['pred_reserved'] / g:.2f} | {r['meas_reserved'] / g:.2f} | "
                     f"{r['err_reserved_pct']:+.1f} | {r['tokens_per_s']:.0f} | {mfu} | {cs} |")
    errs = sorted(abs(r["err_allocated_pct"]) for r in ok)
    if errs:
        lines += ["", f"runs measured: {len(ok)} of {len(rows)}",
                  f"median_abs_error_pct: {statistics.median(errs):.2f}", f"max_abs_error_pct: {errs[-1]:.2f}"]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
