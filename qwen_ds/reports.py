"""What estimate and plan print: the text tables and the JSON objects (one shape each, shared by
the CLI, the Python API and plan.json's ``memory``)."""

from __future__ import annotations

from .estimator import MemoryBreakdown
from .format import gib, human_count, table
from .models import count_params
from .plandoc import PlannedMemory
from .planner.search import distinct_by_grad_accum
from .sharding import autotp_unsupported


def planned_memory(model, b: MemoryBreakdown) -> PlannedMemory:
    c = count_params(model)
    return PlannedMemory.of(c.total, c.active, b)


def trainable_params(model, workload, plan) -> int | None:
    """Parameters the optimizer updates (qwen_ds/models/finetune.py); None for inference."""
    if workload.mode != "train":
        return None
    from .models.finetune import plan_trainable

    return plan_trainable(model, plan)


def finetune_text(model, plan) -> str:
    """', finetune lora r16 (a 32) all-linear: 43.6M trainable' for the plan line; '' for full training."""
    if plan.finetune == "full":
        return ""
    from .models.finetune import plan_trainable

    n = plan_trainable(model, plan)
    if plan.finetune == "freeze":
        how = f"freeze, last {plan.freeze_layers} layers ({plan.trainable_modules})" if plan.freeze_layers > 0 else (
            f"freeze, first {-plan.freeze_layers} layers ({plan.trainable_modules})")
    else:
        how = (f"{plan.finetune} r{plan.lora_rank} (alpha {plan.lora_alpha or 2 * plan.lora_rank}) {plan.lora_targets}"
               + (", 4-bit NF4 base" if plan.finetune == "qlora" else ""))
    return f", {how}: {human_count(n)} trainable"


def estimate_json(model, cluster, workload, plan, lay, b: MemoryBreakdown) -> dict:
    """``estimate --json``: the inputs, then the memory as plan.json keeps it (PlannedMemory)."""
    mem = planned_memory(model, b).to_json()
    counts = {k: mem.pop(k) for k in ("total_params", "active_params")}
    counts["trainable_params"] = trainable_params(model, workload, plan)
    # the node total of the load_peak term, right after the CPU total it may set
    load = sum(t.bytes for t in b.cpu_terms if t.name == "load_peak")
    out = {}
    for k, v in mem.items():
        out[k] = v
        if k == "cpu_total_bytes_per_node":
            out["load_peak_bytes_per_node"] = load
    mem = out
    return {
        "model": model.name,
        **counts,
        "gpu": cluster.gpu.name,
        "nodes": cluster.nodes,
        "gpus_per_node": cluster.gpus_per_node,
        "mode": workload.mode,
        "plan": {
            "zero_stage": plan.zero_stage, "offload_optimizer": plan.offload_optimizer,
            "offload_param": plan.offload_param,
            "dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "micro_batch": plan.micro_batch, "grad_accum": plan.grad_accum,
            "seq_len": workload.seq_len, "new_tokens": workload.new_tokens, "checkpointing": plan.checkpointing,
            "precision": plan.precision, "loss": plan.loss, "kernels": plan.kernels, "allocator": plan.allocator,
            "finetune": plan.finetune,
            **({"lora_rank": plan.lora_rank, "lora_alpha": plan.lora_alpha or 2 * plan.lora_rank,
                "lora_targets": plan.lora_targets} if plan.finetune in ("lora", "qlora") else {}),
            **({"freeze_layers": plan.freeze_layers, "trainable_modules": plan.trainable_modules}
               if plan.finetune == "freeze" else {}),
        },
        **mem,
    }


def estimate_text(model, cluster, workload, plan, lay, b: MemoryBreakdown) -> str:
    c = count_params(model)
    head = (
        f"{model.name}: {human_count(c.total)} params ({human_count(c.active)} active) | "
        f"{cluster.nodes} x {cluster.gpus_per_node} {cluster.gpu.name} | {workload.mode} "
        f"seq {workload.seq_len}{f' + {workload.new_tokens} new' if workload.new_tokens else ''}, "
        f"{'batch' if workload.mode == 'infer' else 'micro-batch'} {plan.micro_batch}\n"
        f"plan: ZeRO-{plan.zero_stage}, dp {lay.dp} x tp {lay.tp} x pp {lay.pp}, {plan.precision}, "
    )
    if workload.mode == "infer":
        head += f"param offload={plan.offload_param}"
    else:
        head += (f"offload optimizer={plan.offload_optimizer} params={plan.offload_param}, "
                 f"checkpointing {'on' if plan.checkpointing else 'off'}, loss {plan.loss}, kernels {plan.kernels}"
                 f"{finetune_text(model, plan)}")
    total = b.gpu_total_bytes or 1
    rows = [[t.name, t.phase, gib(t.bytes), f"{100 * t.bytes / total:.1f}%", t.formula] for t in b.gpu_terms]
    lines = [head, "", "per GPU:", table(["term", "phase", "GiB", "share", "formula"], rows, "llrrl")]
    lines.append(
        f"\npeak allocated {gib(b.gpu_allocated_bytes)} GiB (at {b.peak_phase}) "
        f"-> reserved {gib(b.gpu_reserved_bytes)} GiB "
        f"(+{100 * b.fragmentation:.0f}% fragmentation, {plan.allocator} allocator) "
        f"-> GPU total {gib(b.gpu_total_bytes)} GiB of {gib(b.gpu_memory_bytes)} GiB"
    )
    if b.cpu_terms:
        steady = [t for t in b.cpu_terms if t.phase != "load"]
        parts = [" + ".join(f"{t.name} {gib(t.bytes)} GiB" for t in steady)] if steady else []
        parts += [f"{t.name} {gib(t.bytes)} GiB (at load)" for t in b.cpu_terms if t.phase == "load"]
        how = "max of steady and load peak" if steady else "load peak"
        lines.append(f"\nCPU RAM per node: {', '.join(parts)} -> {gib(b.cpu_total_bytes_per_node)} GiB ({how})")
    if b.nvme_terms:
        lines.append("NVMe per node: " + ", ".join(f"{t.name} {gib(t.bytes)} GiB" for t in b.nvme_terms))
    for note in b.notes:
        lines.append(f"note: {note}")
    if b.fits:
        lines.append(f"\nFITS: {gib(b.gpu_total_bytes)} GiB <= {gib(b.gpu_memory_bytes)} GiB per {cluster.gpu.name} "
                     f"({gib(b.gpu_memory_bytes - b.gpu_total_bytes)} GiB free)")
    else:
        lines.append(f"\nDOES NOT FIT: {gib(b.gpu_total_bytes)} GiB > {gib(b.gpu_memory_bytes)} GiB "
                     f"per {cluster.gpu.name} "
                     f"(short by {gib(b.gpu_total_bytes - b.gpu_memory_bytes)} GiB)")
    return "\n".join(lines)


def describe(c) -> dict:
    """One planner candidate as ``plan --json`` lists it."""
    p, t, m = c.plan, c.time, c.memory
    return {"family": c.family, "zero_stage": p.zero_stage, "offload_optimizer": p.offload_optimizer,
            "offload_param": p.offload_param,
            "tp": p.tp, "pp": p.pp, "micro_batch": p.micro_batch, "grad_accum": p.grad_accum,
            "checkpointing": p.checkpointing,
            "gpu_total_bytes": m.gpu_total_bytes, "cpu_total_bytes_per_node": m.cpu_total_bytes_per_node,
            "step_s": t.step_s, "tokens_per_s": t.tokens_per_s, "mfu": t.mfu, "time_parts": t.parts()}


def batch_line(res) -> str:
    """The one line that says the global batch was not the planner's choice (no --global-batch, no --grad-accum)."""
    pipe = any(c.plan.pp > 1 for c in res.accepted + res.rejected)
    ga = "GA 1; for pipeline plans the fewest micro-batches with a bubble under 20 %" if pipe else "GA 1"
    first = ""
    if res.accepted:
        c = res.accepted[0]
        first = (f" = {c.plan.micro_batch} x {c.plan.grad_accum} x {c.layout.dp} "
                 f"= {c.plan.micro_batch * c.plan.grad_accum * c.layout.dp:,} sequences for #1")
    shape = "micro x GA x dp" if pipe else "micro x 1 x dp"
    return (f"global batch: {shape}{first} "
            f"({ga}: pass --global-batch N to let the planner trade micro-batch for grad-accum)")


def plan_text(model, cluster, workload, res, top, smallest, tp_wanted: bool = False, lora_fit=None) -> str:
    lines = [f"{model.name} on {cluster.nodes} x {cluster.gpus_per_node} {cluster.gpu.name}, "
             f"{workload.mode}, seq {workload.seq_len}: "
             f"{res.considered} plans considered, {len(res.accepted)} fit"]
    if res.accepted:
        rows = []
        for i, c in enumerate(distinct_by_grad_accum(list(res.accepted))[:top], 1):
            p, t, m = c.plan, c.time, c.memory
            rows.append([str(i), c.family, str(p.micro_batch), str(p.grad_accum), "on" if p.checkpointing else "off",
                         gib(m.gpu_total_bytes), gib(m.cpu_total_bytes_per_node), f"{t.step_s:.2f}",
                         f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%"])
        lines.append(table(["#", "plan", "micro", "GA", "ckpt", "GiB/GPU", "CPU GiB/node", "step s", "tokens/s", "MFU"],
                           rows, "rlrrlrrrrr"))
    if getattr(res, "grad_accum_fixed_at_one", False):
        lines.append(batch_line(res))
    fams = res.rejected_families()
    if fams:
        lines.append("\nrejected:")
        lines += [f"  {f}: {r}" for f, r in fams]
    why = autotp_unsupported(model, training=workload.mode == "train")
    if why and tp_wanted:
        lines.append(f"\nnot considered: --tp > 1 ({why})")
    if smallest:
        n, c = smallest
        lines.append(f"\nwithout offload, the smallest cluster that fits is "
                     f"{n} x {cluster.gpus_per_node} {cluster.gpu.name}: "
                     f"{c.family}, micro {c.plan.micro_batch}, {gib(c.memory.gpu_total_bytes)} GiB/GPU, "
                     f"{c.time.tokens_per_s:,.0f} tokens/s")
    if lora_fit is not None:
        here = f"{cluster.nodes} x {cluster.gpus_per_node}"
        full = f"needs {smallest[0]} x {cluster.gpus_per_node}" if smallest else "does not fit"
        lines.append(f"full: {full} without offload; LoRA r16: fits {here} with {lora_fit.family} "
                     f"(micro {lora_fit.plan.micro_batch}, {gib(lora_fit.memory.gpu_total_bytes)} GiB/GPU, "
                     f"{lora_fit.time.tokens_per_s:,.0f} tokens/s; --finetune lora)")
    return "\n".join(lines)


#: plan --compare-finetune's memory columns: the terms each sums (the rest of GiB/GPU is activations, loss,
#: DeepSpeed's buffers and the CUDA / NCCL context)
WEIGHT_TERMS = ("params", "hpz_secondary_params", "zero3_persistent_params")
OPTIMIZER_TERMS = ("gradients", "master_weights_fp32", "optimizer_states")


def finetune_comparison_text(searches) -> str:
    """The fastest plan of each fine-tuning method in one table, with its memory split into weights, optimizer
    (gradients, fp32 masters, Adam m and v) and the rest; then, for a method whose plans all offload, the smallest
    cluster without offload."""
    first = next(s for _, s, _ in searches if s is not None)
    i = first.inputs
    cl, w = i.cluster, i.workload
    lines = [f"{i.model.name} on {cl.nodes} x {cl.gpus_per_node} {cl.gpu.name}, train, seq {w.seq_len}: "
             "the fastest plan of each fine-tuning method"]
    rows, notes = [], []
    for method, s, why in searches:
        label = {"full": "full", "freeze": f"freeze {i.plan.freeze_layers}"}.get(method,
                                                                                 f"{method} r{i.plan.lora_rank}")
        if s is None:
            notes.append(f"{label}: refused: {why}")
            continue
        n = trainable_params(s.inputs.model, w, s.inputs.plan)
        c = s.best
        if c is None:
            rows.append([label, human_count(n), "does not fit", *[""] * 9])
        else:
            t, m, p = c.time, c.memory, c.plan
            terms = m.terms_dict()
            weights = sum(terms.get(k, 0) for k in WEIGHT_TERMS)
            opt = sum(terms.get(k, 0) for k in OPTIMIZER_TERMS)
            rows.append([label, human_count(n), c.family, str(p.micro_batch), str(p.grad_accum), gib(weights),
                         gib(opt), gib(m.gpu_total_bytes - weights - opt), gib(m.gpu_total_bytes),
                         gib(m.cpu_total_bytes_per_node), f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%"])
        if s.smallest is not None:
            k, sc = s.smallest
            notes.append(f"{label}: without offload needs {k} x {cl.gpus_per_node} {cl.gpu.name} "
                         f"({sc.family}, micro {sc.plan.micro_batch}, {gib(sc.memory.gpu_total_bytes)} GiB/GPU, "
                         f"{sc.time.tokens_per_s:,.0f} tokens/s)")
    lines.append(table(["method", "trainable", "fastest plan", "micro", "GA", "weights", "grads+Adam", "other",
                        "GiB/GPU", "CPU GiB/node", "tokens/s", "MFU"], rows, "lrlrrrrrrrrr"))
    lines.append("GiB per GPU: weights (16-bit, or NF4 under QLoRA; as ZeRO partitions them), grads+Adam (gradients, "
                 "fp32 masters, Adam m and v of what trains), other (activations, loss, buffers, CUDA / NCCL)")
    lines += notes
    return "\n".join(lines)
