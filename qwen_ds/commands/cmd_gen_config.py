"""`qwen-ds gen-config`: render ds_config.json + plan.json for a plan, validated, estimated as written
(after --set), and published as one unit (see qwen_ds/publish.py)."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
from pathlib import Path

import click

from .. import __version__
from ..errors import DoesNotFit, InputError
from ..estimator import estimate, layout
from ..format import gib
from ..plandoc import CONFIG_KEY, DIGEST_KEY, config_digest
from ..publish import check_targets, publish_files
from ..render import ConfigOptions, apply_override, fp8_recipe, render
from ..units import GIB
from ..validate import Context, validate_config
from ..validate.plan_from_config import plan_with_edits
from .cmd_estimate import render as render_estimate
from .cmd_estimate import to_json as estimate_json
from .cmd_plan import constraints_from, pinned_knobs, planner_options
from .options import build_inputs, cluster_options, plan_options
from .report import echo_problems, errors


PLAN_KNOBS = ("zero_stage", "offload_optimizer", "offload_param", "micro_batch", "checkpointing", "tp", "pp", "grad_accum")


def launch_command(kw: dict, out: Path, mode: str) -> list[str]:
    cmd = ["qwen-ds", "launch"]
    cmd += ["--hostfile", kw["hostfile"]] if kw.get("hostfile") else ["--hostfile", "HOSTFILE"]
    return cmd + ["--config", str(out / "ds_config.json"), "--plan", str(out / "plan.json"), mode]


@click.command("gen-config", help="Render a validated DeepSpeed config (ds_config.json) and plan.json for a plan.")
@cluster_options
@plan_options
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False), help="Where ds_config.json and plan.json go.")
@click.option("--force", is_flag=True, help="Overwrite existing ds_config.json / plan.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a rendered value, e.g. --set zero_optimization.stage3_max_live_parameters=1e9 (validated after).")
@click.option("--template-dir", type=click.Path(file_okay=False, exists=True), default=None, help="Use your own templates (copy templates/).")
@click.option("--hpz", "hpz_partition_size", type=int, default=1, show_default=True, help="ZeRO++ hpZ partition size (usually GPUs per node).")
@click.option("--quantized-weights", is_flag=True, help="ZeRO++ qwZ: quantized weight all-gathers (ZeRO-3).")
@click.option("--quantized-gradients", is_flag=True, help="ZeRO++ qgZ: quantized gradient reduce-scatter (ZeRO-3).")
@click.option("--nvme-path", default=None, help="Local NVMe directory for --offload-* nvme.")
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--warmup-steps", type=int, default=100, show_default=True)
@click.option("--total-steps", type=int, default=1000, show_default=True)
@click.option("--gradient-clipping", type=float, default=1.0, show_default=True)
@click.option("--communication-data-type", type=click.Choice(["fp16", "bf16", "fp32"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print plan.json to stdout as well.")
@planner_options
@click.pass_context
def command(ctx: click.Context, output_dir: str, force: bool, overrides: tuple[str, ...], template_dir: str | None, hpz_partition_size: int,
            quantized_weights: bool, quantized_gradients: bool, nvme_path: str | None, lr: float, warmup_steps: int,
            total_steps: int, gradient_clipping: float, communication_data_type: str | None, as_json: bool, **kw) -> None:
    model, cluster, workload, plan = build_inputs(kw)
    plan = dataclasses.replace(plan, hpz_partition_size=hpz_partition_size, quantized_weights=quantized_weights,
                               quantized_gradients=quantized_gradients)
    pinned = pinned_knobs(ctx, kw)
    cons, net = constraints_from(kw, pinned)
    chosen_by = "flags"
    if len(pinned) < len(PLAN_KNOBS):  # knobs left open: the planner's fastest plan that fits fills them
        from ..planner import search

        res = search(model, cluster, workload, plan, cons, net)
        if not res.considered:
            raise InputError(f"no plan matches the pinned knobs ({', '.join(f'{k}={v}' for k, v in sorted(pinned.items()))}); "
                             "pin fewer or see qwen-ds plan")
        if not res.accepted:
            reasons = "; ".join(f"{f}: {r}" for f, r in res.rejected_families()[:4])
            raise DoesNotFit(f"no plan fits ({reasons}); see qwen-ds plan")
        plan = res.accepted[0].plan
        chosen_by = f"planner (best of {res.considered}; pinned: {', '.join(sorted(pinned)) or 'none'})"
    opts = ConfigOptions(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps, gradient_clipping=gradient_clipping,
                         nvme_path=nvme_path, communication_data_type=communication_data_type)
    out = Path(output_dir)
    names = ["plan.json", "ds_config.json"]
    check_targets(out, names, force)  # early, to fail before the work; publish_files checks again under its lock
    rendered = render(model, cluster, workload, plan, opts, Path(template_dir) if template_dir else None)
    cfg = copy.deepcopy(rendered)
    for item in overrides:
        apply_override(cfg, item)
    ctx = Context(world_size=cluster.world_size, gpus_per_node=cluster.gpus_per_node, pp=plan.pp, gpu=cluster.gpu, model=model)
    problems = validate_config(cfg, ctx)
    echo_problems(problems, "ds_config.json")
    if errors(problems):
        raise InputError(f"the rendered config has {len(errors(problems))} problem(s); nothing written")
    # the verdict is for the config as written: knobs --set changed are read back from it
    plan, edited = plan_with_edits(plan, rendered, cfg)
    lay = layout(model, cluster, plan)
    mem = estimate(model, cluster, workload, plan)
    usable = int(cluster.gpu.memory_bytes * cons.headroom)  # the planner's limit, for every plan gen-config writes
    if mem.gpu_total_bytes > usable:
        click.echo(render_estimate(model, cluster, workload, plan, lay, mem), err=True)
        by = f" with {_edits(edited)} (--set)" if edited else ""
        raise DoesNotFit(f"this plan{by} needs {gib(mem.gpu_total_bytes)} GiB per GPU, over the {gib(usable)} GiB usable "
                         f"(--headroom {cons.headroom:g} of {gib(cluster.gpu.memory_bytes)} GiB); nothing written "
                         "(change the plan, or see qwen-ds estimate)")
    plan_doc = {
        "qwen_ds_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "deepspeed_version": "0.19.8",
        "model": {"name": model.name, "family": model.family, "source": model.source, "config": dict(model.config)},
        "cluster": {"gpu": cluster.gpu.name, "nodes": cluster.nodes, "gpus_per_node": cluster.gpus_per_node,
                    "world_size": cluster.world_size, "hostfile": kw.get("hostfile")},
        "workload": dataclasses.asdict(workload),
        "plan": {**dataclasses.asdict(plan), "dp": lay.dp},
        "fp8_recipe": fp8_recipe(plan),
        "overrides": list(overrides),
        "chosen_by": chosen_by,
        "memory": estimate_json(model, cluster, workload, plan, lay, mem),
        "launch": {"command": launch_command(kw, out, workload.mode)},
        DIGEST_KEY: config_digest(cfg),
        CONFIG_KEY: cfg,
    }
    # plan.json first: a reader between the two renames (or after a crash there) sees the new plan beside
    # the old config, which the plan's digest refuses; the other order could pair the new config with an
    # old plan.json that has no digest, which readers only warn about
    publish_files(out, [(name, _json_bytes(doc)) for name, doc in zip(names, (plan_doc, cfg))], force)
    targets = [out / "ds_config.json", out / "plan.json"]
    if as_json:
        click.echo(json.dumps(plan_doc, indent=2))
    else:
        click.echo(f"wrote {targets[0]} and {targets[1]}")
        click.echo(f"plan chosen by {chosen_by}")
        if edited:
            click.echo(f"--set changed {_edits(edited)}; the memory below is for the config as written")
        click.echo(f"ZeRO-{plan.zero_stage}, offload optimizer={plan.offload_optimizer} params={plan.offload_param}, "
                   f"dp {lay.dp} x tp {lay.tp} x pp {lay.pp}, micro-batch {plan.micro_batch} x grad-accum {plan.grad_accum}, "
                   f"checkpointing {'on' if plan.checkpointing else 'off'}, {plan.precision}; "
                   f"{mem.gpu_total_bytes / GIB:.2f} GiB of {mem.gpu_memory_bytes / GIB:.2f} GiB per GPU")
        click.echo("launch: " + " ".join(plan_doc["launch"]["command"]))


def _json_bytes(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _edits(edited: dict) -> str:
    def show(v):
        return json.dumps(v) if isinstance(v, bool) else str(v)

    return ", ".join(f"{k} {show(v0)} -> {show(v1)}" for k, (v0, v1) in edited.items())
