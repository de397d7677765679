"""`qwen-ds validate CONFIG`: schema + semantic rules (+ DeepSpeed's own parser) + memory verdict."""

from __future__ import annotations

import json
import sys

import click

from ..errors import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT, InputError, one_line
from ..hardware import Cluster, get_gpu
from ..models import load_model
from ..plan import Workload
from ..plandoc import check_pair, mismatch_line, read_plan_document, unchecked_line, values_text
from ..units import GIB
from ..validate import Context, Problem, is_inference_config, validate_config
from ..validate.parse import read_config
from .options import cluster_shape
from .report import echo_problems, errors


@click.command("validate", help="Check a DeepSpeed config: JSON Schema of 0.19.8, semantic rules, DeepSpeed's own parser, "
               "and with --model/--gpu the memory verdict. Exit 0 ok, 2 problems, 3 does not fit.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None, help="Model (preset, config.json, HF dir, cached HF id) for hints and the memory verdict.")
@click.option("--gpu", "-g", default=None, help="GPU type: checks bf16/fp8 support and the memory verdict.")
@click.option("--hostfile", default=None, type=click.Path(dir_okay=False), help="Cluster shape for batch arithmetic.")
@click.option("--nodes", type=int, default=None)
@click.option("--gpus-per-node", type=int, default=None)
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages the script builds (PipelineModule num_stages).")
@click.option("--seq-len", type=int, default=4096, show_default=True, help="For the memory verdict.")
@click.option("--new-tokens", type=int, default=0, show_default=True, help="For the memory verdict of inference configs.")
@click.option("--checkpointing/--no-checkpointing", default=True, show_default=True, help="Whether the script checkpoints activations.")
@click.option("--deepspeed/--no-deepspeed", "use_deepspeed", default=None,
              help="Also run DeepSpeed's own parser in a child process [on when deepspeed is installed].")
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="plan.json from gen-config: an error for every key where CONFIG differs from the config the plan was made with.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: ok, problems (path, message, rule, severity), memory.")
def command(config: str, model: str | None, gpu: str | None, hostfile: str | None, nodes: int | None, gpus_per_node: int | None,
            pp: int, seq_len: int, new_tokens: int, checkpointing: bool, use_deepspeed: bool | None, plan_path: str | None,
            as_json: bool) -> None:
    cfg = read_config(config)
    plan_doc = read_plan_document(plan_path, "--plan") if plan_path else None
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node), ("--pp", pp), ("--seq-len", seq_len)):
        if v is not None and v < 1:
            raise InputError(f"{flag} {v}: must be a positive integer")
    world = gpn = None
    if hostfile or nodes is not None or gpus_per_node is not None:
        n, gpn = cluster_shape({"hostfile": hostfile, "nodes": nodes, "gpus_per_node": gpus_per_node})
        world = n * gpn
    spec = load_model(model) if model is not None else None
    gpu_spec = get_gpu(gpu) if gpu is not None else None
    if use_deepspeed is None:
        from ..validate.dscheck import deepspeed_available

        use_deepspeed = deepspeed_available()
    ctx = Context(world_size=world, gpus_per_node=gpn, pp=pp, gpu=gpu_spec, model=spec)
    problems = validate_config(cfg, ctx, use_deepspeed=use_deepspeed)
    if plan_doc is not None:
        problems += plan_problems(cfg, plan_doc, config, plan_path)
    memory = None
    if not errors(problems) and spec and gpu_spec:
        try:
            memory = _memory(cfg, spec, gpu_spec, world, gpn, pp, seq_len, new_tokens, checkpointing)
        except (InputError, OverflowError, ValueError) as exc:
            problems.append(Problem("$", f"memory verdict skipped: {exc}; give --hostfile or --nodes/--gpus-per-node "
                                    "matching the config", "memory", "warning"))
    ds_ran = bool(use_deepspeed) and not any(p.rule != "deepspeed" and p.severity == "error" for p in problems)
    ok = not errors(problems) and (memory is None or memory["fits"])
    if as_json:
        click.echo(json.dumps({"config": config, "ok": ok, "problems": [p.as_dict() for p in problems],
                               "deepspeed_checked": ds_ran, "memory": memory}, indent=2))
    else:
        echo_problems(problems, config)
        if memory:
            verdict = "fits" if memory["fits"] else "DOES NOT FIT"
            click.echo(f"{config}: memory: {memory['gpu_total_bytes'] / GIB:.2f} GiB of "
                       f"{memory['gpu_memory_bytes'] / GIB:.2f} GiB per GPU: {verdict}")
        if not errors(problems) and (memory is None or memory["fits"]):
            click.echo(f"{config}: ok ({'schema, rules and DeepSpeed 0.19.8 parser' if ds_ran else 'schema and rules'})")
    if errors(problems):
        sys.exit(EXIT_BAD_INPUT)
    if memory and not memory["fits"]:
        sys.exit(EXIT_DOES_NOT_FIT)


def plan_problems(cfg: dict, plan_doc: dict, config: str, plan_path: str) -> list[Problem]:
    """One error per key where the config differs from the one the plan was made with (a warning
    for a plan.json that records no digest)."""
    pair = check_pair(cfg, plan_doc)
    if pair.status == "unchecked":
        return [Problem("$", unchecked_line(config, plan_path), "plan", "warning")]
    if pair.status == "match":
        return []
    if not pair.differences:
        return [Problem("$", mismatch_line(config, plan_path, pair), "plan")]
    fix = (f"{one_line(plan_path)} was made with another config; regenerate both with qwen-ds gen-config "
           "(--set for your edits), or pass the plan made with this config")
    return [Problem(_json_path(path), f"{values_text(a, b)}: {fix}", "plan") for path, a, b in pair.differences]


def _json_path(dotted: str) -> str:
    return "$" if dotted == "$" else "$." + dotted


def _memory(cfg, spec, gpu_spec, world, gpn, pp, seq_len, new_tokens, checkpointing) -> dict:
    from ..estimator import estimate, layout
    from ..validate.plan_from_config import plan_from_config
    from .cmd_estimate import to_json

    plan = plan_from_config(cfg, pp=pp, checkpointing=checkpointing, default_precision="bf16" if gpu_spec.bf16 else "fp16")
    mode = "infer" if is_inference_config(cfg) or "optimizer" not in cfg and plan.zero_stage == 3 and plan.offload_param != "none" else "train"
    nodes, per_node = (world // gpn, gpn) if world else (1, max(plan.tp * pp, 1))
    cluster = Cluster(gpu_spec, nodes, per_node)
    workload = Workload(mode=mode, seq_len=seq_len, new_tokens=new_tokens)
    return to_json(spec, cluster, workload, plan, layout(spec, cluster, plan), estimate(spec, cluster, workload, plan))
