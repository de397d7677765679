"""`qwen-ds estimate`: memory per GPU and per node for one plan, term by term."""

from __future__ import annotations

import json
import sys

import click

from ..errors import EXIT_DOES_NOT_FIT
from ..estimator import MemoryBreakdown, estimate, layout
from ..format import gib, human_count, table
from ..models import count_params
from .options import build_inputs, cluster_options, plan_options


def to_json(model, cluster, workload, plan, lay, b: MemoryBreakdown) -> dict:
    c = count_params(model)
    return {
        "model": model.name,
        "total_params": c.total,
        "active_params": c.active,
        "gpu": cluster.gpu.name,
        "nodes": cluster.nodes,
        "gpus_per_node": cluster.gpus_per_node,
        "mode": workload.mode,
        "plan": {
            "zero_stage": plan.zero_stage, "offload_optimizer": plan.offload_optimizer, "offload_param": plan.offload_param,
            "dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "micro_batch": plan.micro_batch, "grad_accum": plan.grad_accum,
            "seq_len": workload.seq_len, "new_tokens": workload.new_tokens, "checkpointing": plan.checkpointing,
            "precision": plan.precision, "loss": plan.loss, "kernels": plan.kernels,
        },
        "gpu_memory_bytes": b.gpu_memory_bytes,
        "gpu_allocated_bytes": b.gpu_allocated_bytes,
        "gpu_reserved_bytes": b.gpu_reserved_bytes,
        "gpu_total_bytes": b.gpu_total_bytes,
        "peak_phase": b.peak_phase,
        "cpu_total_bytes_per_node": b.cpu_total_bytes_per_node,
        "nvme_total_bytes_per_node": b.nvme_total_bytes_per_node,
        "fits": b.fits,
        "terms": b.terms_dict(),
        "term_phases": {t.name: t.phase for t in b.gpu_terms},
        "cpu_terms": {t.name: t.bytes for t in b.cpu_terms},
        "nvme_terms": {t.name: t.bytes for t in b.nvme_terms},
        "notes": list(b.notes),
    }


def render(model, cluster, workload, plan, lay, b: MemoryBreakdown) -> str:
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
                 f"checkpointing {'on' if plan.checkpointing else 'off'}, loss {plan.loss}, kernels {plan.kernels}")
    total = b.gpu_total_bytes or 1
    rows = [[t.name, t.phase, gib(t.bytes), f"{100 * t.bytes / total:.1f}%", t.formula] for t in b.gpu_terms]
    lines = [head, "", "per GPU:", table(["term", "phase", "GiB", "share", "formula"], rows, "llrrl")]
    lines.append(
        f"\npeak allocated {gib(b.gpu_allocated_bytes)} GiB (at {b.peak_phase}) -> reserved {gib(b.gpu_reserved_bytes)} GiB "
        f"(+{100 * b.fragmentation:.0f}% fragmentation) -> GPU total {gib(b.gpu_total_bytes)} GiB of {gib(b.gpu_memory_bytes)} GiB"
    )
    if b.cpu_terms:
        lines.append("\nCPU RAM per node: " + ", ".join(f"{t.name} {gib(t.bytes)} GiB" for t in b.cpu_terms)
                     + f" = {gib(b.cpu_total_bytes_per_node)} GiB")
    if b.nvme_terms:
        lines.append("NVMe per node: " + ", ".join(f"{t.name} {gib(t.bytes)} GiB" for t in b.nvme_terms))
    for note in b.notes:
        lines.append(f"note: {note}")
    if b.fits:
        lines.append(f"\nFITS: {gib(b.gpu_total_bytes)} GiB <= {gib(b.gpu_memory_bytes)} GiB per {cluster.gpu.name} "
                     f"({gib(b.gpu_memory_bytes - b.gpu_total_bytes)} GiB free)")
    else:
        lines.append(f"\nDOES NOT FIT: {gib(b.gpu_total_bytes)} GiB > {gib(b.gpu_memory_bytes)} GiB per {cluster.gpu.name} "
                     f"(short by {gib(b.gpu_total_bytes - b.gpu_memory_bytes)} GiB)")
    return "\n".join(lines)


@click.command("estimate", help="Memory per GPU and per node for one plan, term by term. Exit 0 fits, 3 does not fit, 2 bad input.")
@cluster_options
@plan_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (gpu_total_bytes, gpu_reserved_bytes, cpu_total_bytes_per_node, fits, terms, ...).")
def command(as_json: bool, **kw) -> None:
    model, cluster, workload, plan = build_inputs(kw)
    lay = layout(model, cluster, plan)
    b = estimate(model, cluster, workload, plan)
    if as_json:
        click.echo(json.dumps(to_json(model, cluster, workload, plan, lay, b), indent=2))
    else:
        click.echo(render(model, cluster, workload, plan, lay, b))
    if not b.fits:
        sys.exit(EXIT_DOES_NOT_FIT)
