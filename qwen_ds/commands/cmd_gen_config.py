"""`qwen-ds gen-config`: render ds_config.json + plan.json for a plan, validated, estimated as written
(after --set), and published as one unit (see qwen_ds/api.py generate and qwen_ds/publish.py)."""

from __future__ import annotations

import json

import click

from .. import api
from ..consumers import CONSUMERS
from ..render import ConfigOptions
from .options import cluster_options, pinned, plan_options, planner_options, search_options


@click.command("gen-config", help="Render a validated DeepSpeed config (ds_config.json) and plan.json for a plan.")
@cluster_options
@plan_options
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False),
              help="Where ds_config.json and plan.json go.")
@click.option("--force", is_flag=True, help="Overwrite existing ds_config.json / plan.json.")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a rendered value, e.g. --set zero_optimization.stage3_max_live_parameters=1e9 "
                   "(validated after).")
@click.option("--template-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Use your own templates (copy templates/).")
@click.option("--hpz", "hpz_partition_size", type=int, default=1, show_default=True,
              help="ZeRO++ hpZ partition size (usually GPUs per node).")
@click.option("--quantized-weights", is_flag=True, help="ZeRO++ qwZ: quantized weight all-gathers (ZeRO-3).")
@click.option("--quantized-gradients", is_flag=True, help="ZeRO++ qgZ: quantized gradient reduce-scatter (ZeRO-3).")
@click.option("--nvme-path", default=None, help="Local NVMe directory for --offload-* nvme.")
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--warmup-steps", type=int, default=100, show_default=True)
@click.option("--total-steps", type=int, default=1000, show_default=True)
@click.option("--gradient-clipping", type=float, default=1.0, show_default=True)
@click.option("--communication-data-type", type=click.Choice(["fp16", "bf16", "fp32"]), default=None)
@click.option("--for", "consumer", type=click.Choice(CONSUMERS), default="deepspeed", show_default=True,
              help="Who runs the config: deepspeed (qwen-ds launch / deepspeed.initialize); hf-trainer "
                   "(\"auto\" where the HF Trainer fills it, plus training_args.json and llamafactory.yaml); "
                   "accelerate (no optimizer or scheduler block: the loop brings its own).")
@click.option("--json", "as_json", is_flag=True, help="Print plan.json to stdout as well.")
@planner_options
@click.pass_context
def command(ctx: click.Context, model: str, gpu: str, output_dir: str, force: bool, overrides: tuple[str, ...],
            template_dir: str | None, hpz_partition_size: int, quantized_weights: bool, quantized_gradients: bool,
            nvme_path: str | None, lr: float, warmup_steps: int, total_steps: int, gradient_clipping: float,
            communication_data_type: str | None, consumer: str, as_json: bool, **kw) -> None:
    opts = ConfigOptions(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps, gradient_clipping=gradient_clipping,
                         nvme_path=nvme_path, communication_data_type=communication_data_type)
    zpp = dict(hpz_partition_size=hpz_partition_size, quantized_weights=quantized_weights,
               quantized_gradients=quantized_gradients)
    result = api.generate(model, gpu, output_dir=output_dir, force=force, overrides=overrides,
                          template_dir=template_dir, config_options=opts, zero_plus_plus=zpp, consumer=consumer,
                          pinned=pinned(ctx), options=search_options(kw), **kw)
    if result.problems:
        click.echo(api.problems_text(result.problems, "ds_config.json"), err=True)
    click.echo(json.dumps(result.document.to_json(), indent=2) if as_json else result.text())
