"""`qwen-ds plan`: the fastest plans that fit, the families that do not and why."""

from __future__ import annotations

import json
import sys

import click

from ..errors import EXIT_DOES_NOT_FIT
from ..format import gib, table
from ..planner import Candidate, Constraints, Network, search, smallest_cluster_without_offload
from ..planner.search import cpu_mem_bytes
from ..sharding import autotp_unsupported
from .options import build_inputs, cluster_options, plan_options


def planner_options(f):
    for d in reversed([
        click.option("--global-batch", type=int, default=None, help="Sequences per optimizer step (fixes micro x grad-accum x dp)."),
        click.option("--headroom", type=float, default=0.92, show_default=True, help="Usable fraction of GPU memory."),
        click.option("--cpu-mem-per-node", type=float, default=None, help="CPU RAM per node in GiB for offload [unlimited, reported]."),
        click.option("--allow-nvme", is_flag=True, help="Also consider NVMe offload."),
        click.option("--allow-tp", is_flag=True, help="Also consider tensor parallelism for training (AutoTP)."),
        click.option("--allow-pp", is_flag=True, help="Also consider pipeline parallelism (needs a PipelineModule training script)."),
        click.option("--inter-node-gbps", type=float, default=None, help="Network between nodes, Gbit/s per node [200 x GPUs per node]."),
        click.option("--compute-efficiency", type=float, default=0.55, show_default=True, help="Achieved / peak tensor TFLOP/s."),
    ]):
        f = d(f)
    return f


def constraints_from(kw: dict, pinned: dict) -> tuple[Constraints, Network]:
    nvme = kw["allow_nvme"] or "nvme" in (pinned.get("offload_optimizer"), pinned.get("offload_param"))
    c = Constraints(headroom=kw["headroom"], cpu_mem_per_node=cpu_mem_bytes(kw["cpu_mem_per_node"]), allow_nvme=nvme,
                    global_batch=kw["global_batch"], train_tp=kw["allow_tp"], train_pp=kw["allow_pp"], fixed=pinned)
    return c, Network(inter_node_gbps=kw["inter_node_gbps"], compute_efficiency=kw["compute_efficiency"])


def pinned_knobs(ctx: click.Context, kw: dict) -> dict:
    """Plan knobs the user typed on the command line; the rest are the planner's to choose."""
    out = {}
    for key in ("zero_stage", "offload_optimizer", "offload_param", "micro_batch", "checkpointing", "tp", "pp", "grad_accum"):
        src = ctx.get_parameter_source(key)
        if src is not None and src.name == "COMMANDLINE":
            out[key] = kw[key]
    return out


def describe(c: Candidate) -> dict:
    p, t, m = c.plan, c.time, c.memory
    return {"family": c.family, "zero_stage": p.zero_stage, "offload_optimizer": p.offload_optimizer, "offload_param": p.offload_param,
            "tp": p.tp, "pp": p.pp, "micro_batch": p.micro_batch, "grad_accum": p.grad_accum, "checkpointing": p.checkpointing,
            "gpu_total_bytes": m.gpu_total_bytes, "cpu_total_bytes_per_node": m.cpu_total_bytes_per_node,
            "step_s": t.step_s, "tokens_per_s": t.tokens_per_s, "mfu": t.mfu, "time_parts": t.parts()}


@click.command("plan", help="Find the fastest plans that fit: candidates filtered by the estimator and ranked by a step-time model.")
@cluster_options
@plan_options
@planner_options
@click.option("--top", type=int, default=8, show_default=True)
@click.option("--explain", is_flag=True, help="Show the memory and time terms of the winner.")
@click.option("--chart", type=click.Path(dir_okay=False), default=None,
              help="Write a stacked-bar chart of the top plans' memory (.png, .svg, .pdf, ...; png without a suffix).")
@click.option("--force", is_flag=True, help="Overwrite an existing --chart file.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def command(ctx: click.Context, top: int, explain: bool, chart: str | None, force: bool, as_json: bool, **kw) -> None:
    model, cluster, workload, base = build_inputs(kw)
    cons, net = constraints_from(kw, pinned_knobs(ctx, kw))
    if chart:
        from ..chart import chart_format

        chart_format(chart, force)  # before the search: a bad name or an existing file fails first
    res = search(model, cluster, workload, base, cons, net)
    smallest = None
    no_offload_fits = any(c.plan.offload_optimizer == c.plan.offload_param == "none" for c in res.accepted)
    if workload.mode == "train" and not no_offload_fits:
        smallest = smallest_cluster_without_offload(model, cluster, workload, base, cons, net)
    if as_json:
        click.echo(json.dumps({
            "model": model.name, "gpu": cluster.gpu.name, "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node,
            "mode": workload.mode, "considered": res.considered, "accepted": len(res.accepted),
            "best": [describe(c) for c in res.accepted[:top]],
            "rejected_families": [{"family": f, "reason": r} for f, r in res.rejected_families()],
            "smallest_cluster_without_offload": None if smallest is None else
            {"nodes": smallest[0], "gpus_per_node": cluster.gpus_per_node, "plan": describe(smallest[1])},
        }, indent=2))
    else:
        click.echo(render(model, cluster, workload, res, top, smallest, workload.mode == "infer" or cons.train_tp))
        if explain and res.accepted:
            from .cmd_estimate import render as render_estimate
            from ..estimator import layout

            best = res.accepted[0]
            click.echo("\nwinner, memory:\n" + render_estimate(model, cluster, workload, best.plan, layout(model, cluster, best.plan), best.memory))
            click.echo("\nwinner, step time: " + ", ".join(f"{k} {v:.3f}" for k, v in best.time.parts().items()))
    if chart and res.accepted:
        from ..chart import memory_chart

        memory_chart(res.accepted[:min(top, 6)], cluster, cons.headroom, chart, force)
    if not res.accepted:
        sys.exit(EXIT_DOES_NOT_FIT)


def render(model, cluster, workload, res, top, smallest, tp_wanted: bool = False) -> str:
    lines = [f"{model.name} on {cluster.nodes} x {cluster.gpus_per_node} {cluster.gpu.name}, {workload.mode}, seq {workload.seq_len}: "
             f"{res.considered} plans considered, {len(res.accepted)} fit"]
    if res.accepted:
        rows = []
        for i, c in enumerate(res.accepted[:top], 1):
            p, t, m = c.plan, c.time, c.memory
            rows.append([str(i), c.family, str(p.micro_batch), str(p.grad_accum), "on" if p.checkpointing else "off",
                         gib(m.gpu_total_bytes), gib(m.cpu_total_bytes_per_node), f"{t.step_s:.2f}", f"{t.tokens_per_s:,.0f}", f"{100 * t.mfu:.1f}%"])
        lines.append(table(["#", "plan", "micro", "GA", "ckpt", "GiB/GPU", "CPU GiB/node", "step s", "tokens/s", "MFU"], rows, "rlrrlrrrrr"))
    fams = res.rejected_families()
    if fams:
        lines.append("\nrejected:")
        lines += [f"  {f}: {r}" for f, r in fams]
    why = autotp_unsupported(model)
    if why and tp_wanted:
        lines.append(f"\nnot considered: --tp > 1 ({why})")
    if smallest:
        n, c = smallest
        lines.append(f"\nwithout offload, the smallest cluster that fits is {n} x {cluster.gpus_per_node} {cluster.gpu.name}: "
                     f"{c.family}, micro {c.plan.micro_batch}, {gib(c.memory.gpu_total_bytes)} GiB/GPU, {c.time.tokens_per_s:,.0f} tokens/s")
    return "\n".join(lines)
