"""`qwen-ds estimate`: memory per GPU and per node for one plan, term by term."""

from __future__ import annotations

import json
import sys

import click

from .. import api
from ..errors import EXIT_DOES_NOT_FIT, InputError
from .options import cluster_options, plan_options


@click.command("estimate", help="Memory per GPU and per node for one plan, term by term. "
                                "Exit 0 fits, 3 does not fit, 2 bad input.")
@cluster_options
@plan_options
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Size this existing DeepSpeed config (yours, LLaMA-Factory's, axolotl's) instead of flags: its ZeRO "
                   "stage, offload, batch and buckets; \"auto\" filled as the HF Trainer will (see qwen-ds validate).")
@click.option("--training-args", type=click.Path(dir_okay=False), default=None,
              help="With --config: training_args.json or a LLaMA-Factory YAML its \"auto\" values come from.")
@click.option("--cpu-mem-per-node", type=float, default=None,
              help="CPU RAM per node in GiB: a plan whose CPU RAM (offload, or the load peak) exceeds it does not fit "
                   "[not checked, reported].")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (gpu_total_bytes, gpu_reserved_bytes, cpu_total_bytes_per_node, "
                   "fits, terms, ...).")
@click.pass_context
def command(ctx: click.Context, as_json: bool, model: str, gpu: str, config: str | None, training_args: str | None,
            cpu_mem_per_node: float | None, **kw) -> None:
    if config is None:
        if training_args:
            raise InputError("--training-args needs --config (the DeepSpeed config whose \"auto\" it fills)")
        result = api.estimate(model, gpu, cpu_mem_per_node=cpu_mem_per_node, **kw)
        click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
        if not result.fits:
            sys.exit(EXIT_DOES_NOT_FIT)
        return
    if cpu_mem_per_node is not None:
        raise InputError("--cpu-mem-per-node with --config: not supported yet; run without --config for the RAM check")
    typed = {k for k in kw if (src := ctx.get_parameter_source(k)) is not None and src.name == "COMMANDLINE"}
    cluster = {k: kw[k] for k in ("nodes", "gpus_per_node", "hostfile")}
    result = api.estimate_config(config, model, gpu, training_args=training_args,
                                 given={k: kw[k] for k in typed if k not in cluster}, **cluster)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        if result.problems:
            click.echo(api.problems_text(result.problems, config), err=True)
        click.echo(result.text())
    if not result.fits:
        sys.exit(EXIT_DOES_NOT_FIT)
