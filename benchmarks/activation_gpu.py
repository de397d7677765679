"""Activation + loss peak memory of plain HF training steps on one GPU, against `qwen-ds estimate`.

No DeepSpeed here (that is benchmarks/memory_accuracy.py, issue #7): this isolates the estimator's
activation / logits / loss terms and measures the CUDA context. For each case:
  1. build the model (random init, bf16, sdpa) on the GPU; run one step so every .grad exists;
  2. zero grads in place, reset the peak counter; base = memory_allocated() (params + grads);
  3. forward with labels + backward; measured = max_memory_allocated() - base;
  4. predicted = the estimator's fwd_bwd activation and loss terms for the same plan.
Writes a markdown table (predicted, measured, error %) and the versions to $OUT or --out.
Usage: python benchmarks/activation_gpu.py [--out DIR] [--quick]
       python benchmarks/activation_gpu.py --recompute RESULTS.jsonl   (no GPU: re-predict stored measurements)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from qwen_ds.estimator import estimate  # noqa: E402
from qwen_ds.hardware import Cluster, get_gpu  # noqa: E402
from qwen_ds.models import load_model  # noqa: E402
from qwen_ds.units import GIB  # noqa: E402
from qwen_ds.knobs import Plan, Workload  # noqa: E402

# (preset, layers or None, seq_len, micro_batch, checkpointing)
CASES = [
    ("Qwen3-0.6B", None, 2048, 1, False),
    ("Qwen3-0.6B", None, 2048, 2, False),
    ("Qwen3-0.6B", None, 4096, 1, False),
    ("Qwen3-0.6B", None, 4096, 2, True),
    ("Qwen3-1.7B", None, 4096, 1, False),
    ("Qwen3-1.7B", None, 4096, 2, True),
    ("Qwen3-4B", 12, 4096, 1, False),
    ("Qwen3-4B", 12, 4096, 2, True),
    ("Qwen3-8B", 8, 4096, 1, False),
    ("Llama-3.1-8B", 8, 2048, 1, False),
    ("Qwen2.5-7B", 8, 2048, 1, False),
    ("Qwen3-30B-A3B", 4, 2048, 1, False),
    ("Qwen3-30B-A3B", 4, 2048, 1, True),
    ("Qwen3-Next-80B-A3B", 4, 1024, 1, False),
    ("Qwen3-Next-80B-A3B", 4, 2048, 1, True),
]


def gpu_name_in_catalog() -> str:
    import torch

    name = torch.cuda.get_device_name().lower()
    if "h200" in name:
        return "H200"
    if "h100" in name:
        return "H100-SXM"
    return "A100-80GB"


def build(spec):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(spec.config)
    model_type = cfg.pop("model_type")
    hf = AutoConfig.for_model(model_type, **cfg)
    hf._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf, torch_dtype=torch.bfloat16)
    return model


def measure(spec, seq, mb, ckpt) -> dict:
    import torch

    torch.cuda.empty_cache()
    model = build(spec)
    model.train()
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(0, spec.vocab_size, (mb, seq), device="cuda")
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    del out
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    fwd_peak = torch.cuda.max_memory_allocated() - base
    out.loss.backward()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    del out, model, ids
    torch.cuda.empty_cache()
    return {"measured": peak, "fwd_peak": fwd_peak, "seconds": dt}


def predict(spec, seq, mb, ckpt, gpu) -> int:
    """The estimator's backward peak (activations + loss, exclusive peaks resolved) for this plan."""
    plan = Plan(zero_stage=0, micro_batch=mb, checkpointing=ckpt, precision="bf16", loss="hf", kernels="hf")
    return estimate(spec, Cluster(get_gpu(gpu), 1, 1), Workload(seq_len=seq), plan).backward_peak_bytes


def recompute(path: str) -> None:
    """Re-predict stored GPU measurements with the current estimator (no GPU needed)."""
    errs = []
    for line in open(path, encoding="utf-8"):
        r = json.loads(line)
        base, _, layers = r["model"].partition("-L")
        spec = load_model(base) if not layers.isdigit() else load_model(base).with_layers(int(layers))
        if not layers.isdigit() and r["model"] != spec.name:
            spec = load_model(r["model"])
        pred = predict(spec, r["seq"], r["micro_batch"], r["checkpointing"], "H200")
        err = 100 * (pred - r["measured"]) / r["measured"]
        errs.append(abs(err))
        print(f"{r['model']:24s} seq {r['seq']:5d} mb {r['micro_batch']} ckpt {str(r['checkpointing']):5s} "
              f"pred {pred / GIB:7.3f} meas {r['measured'] / GIB:7.3f} GiB  err {err:+6.2f}%")
    errs.sort()
    print(f"median_abs_error_pct: {errs[len(errs) // 2]:.2f}\nmax_abs_error_pct: {errs[-1]:.2f}")


def cuda_context() -> dict:
    import torch

    free0, total = torch.cuda.mem_get_info()
    torch.zeros(1, device="cuda")
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # creates the cuBLAS handle/workspace
    free1, _ = torch.cuda.mem_get_info()
    return {"total_bytes": total, "used_after_init_bytes": total - free1, "torch_reserved_bytes": torch.cuda.memory_reserved(),
            "outside_allocator_bytes": total - free1 - torch.cuda.memory_reserved()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--recompute", default="", help="re-predict a stored .jsonl of measurements; no GPU needed")
    args = ap.parse_args()
    if args.recompute:
        recompute(args.recompute)
        return
    import torch
    import transformers

    ctx = cuda_context()
    gpu = gpu_name_in_catalog()
    rows = []
    for preset, layers, seq, mb, ckpt in CASES[:3] if args.quick else CASES:
        spec = load_model(preset)
        if layers:
            spec = spec.with_layers(layers)
        try:
            m = measure(spec, seq, mb, ckpt)
        except torch.OutOfMemoryError:
            print(f"OOM {spec.name} seq {seq} mb {mb} ckpt {ckpt}", flush=True)
            torch.cuda.empty_cache()
            continue
        pred = predict(spec, seq, mb, ckpt, gpu)
        err = 100 * (pred - m["measured"]) / m["measured"]
        row = {"model": spec.name, "seq": seq, "micro_batch": mb, "checkpointing": ckpt, "predicted": pred, "measured": m["measured"],
               "error_pct": round(err, 2), "fwd_peak": m["fwd_peak"], "seconds": round(m["seconds"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    date = datetime.date.today().isoformat()
    lines = [f"# Activation + loss memory of plain HF training steps vs qwen-ds estimate ({date})", "",
             f"GPU: {torch.cuda.get_device_name()} | torch {torch.__version__} | transformers {transformers.__version__} | "
             f"CUDA {torch.version.cuda}", "",
             "measured = max_memory_allocated during forward(labels)+backward minus params and grads already allocated; "
             "predicted = the estimator's backward peak: fwd_bwd terms + max(loss, recompute) (plan: ZeRO-0, 1 GPU, bf16, loss hf, kernels hf).", "",
             f"CUDA context: {json.dumps(ctx)}", "",
             "| model | seq | mb | ckpt | predicted GiB | measured GiB | error % | fwd peak GiB | fwd+bwd s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['seq']} | {r['micro_batch']} | {r['checkpointing']} | {r['predicted'] / GIB:.3f} | "
                     f"{r['measured'] / GIB:.3f} | {r['error_pct']:+.1f} | {r['fwd_peak'] / GIB:.3f} | {r['seconds']} |")
    errs = sorted(abs(r["error_pct"]) for r in rows)
    if errs:
        lines += ["", f"median_abs_error_pct: {errs[len(errs) // 2]:.2f}", f"max_abs_error_pct: {errs[-1]:.2f}"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    gpu_tag = gpu.lower().replace("-", "")
    (Path(args.out) / f"activation_gpu_{gpu_tag}_{date}.md").write_text("\n".join(lines) + "\n")
    (Path(args.out) / f"activation_gpu_{gpu_tag}_{date}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
