"""`qwen-ds validate CONFIG`: schema + semantic rules (+ DeepSpeed's own parser) + memory verdict."""

from __future__ import annotations

import json
import sys

import click

from .. import api
from ..consumers import CONSUMERS
from ..knobs import ALLOCATORS


@click.command("validate", help="Check a DeepSpeed config: JSON Schema of 0.19.8, semantic rules, "
                                "DeepSpeed's own parser, "
               "and with --model/--gpu the memory verdict. Exit 0 ok, 2 problems, 3 does not fit.")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--model", "-m", default=None,
              help="Model (preset, config.json, HF dir, cached HF id) for hints and the memory verdict.")
@click.option("--gpu", "-g", default=None, help="GPU type: checks bf16/fp8 support and the memory verdict.")
@click.option("--hostfile", default=None, type=click.Path(dir_okay=False), help="Cluster shape for batch arithmetic.")
@click.option("--nodes", type=int, default=None)
@click.option("--gpus-per-node", type=int, default=None)
@click.option("--pp", type=int, default=1, show_default=True,
              help="Pipeline stages the script builds (PipelineModule num_stages).")
@click.option("--seq-len", type=int, default=None,
              help="For the memory verdict [4096, or the cutoff_len of a LLaMA-Factory --training-args].")
@click.option("--new-tokens", type=int, default=0, show_default=True,
              help="For the memory verdict of inference configs.")
@click.option("--checkpointing/--no-checkpointing", default=None,
              help="Whether the script checkpoints activations [what --training-args says, else on].")
@click.option("--deepspeed/--no-deepspeed", "use_deepspeed", default=None,
              help="Also run DeepSpeed's own parser in a child process [on when deepspeed is installed].")
@click.option("--plan", "plan_path", default=None, type=click.Path(dir_okay=False),
              help="plan.json from gen-config: an error for every key where CONFIG differs "
                   "from the config the plan was made with.")
@click.option("--for", "consumer", type=click.Choice(CONSUMERS), default=None,
              help="Who runs CONFIG [detected: hf-trainer when it has \"auto\" where the HF Trainer fills it]. "
                   "For hf-trainer / accelerate, \"auto\" is filled as the Trainer will, from the flags below.")
@click.option("--training-args", type=click.Path(dir_okay=False), default=None,
              help="training_args.json (TrainingArguments fields) or a LLaMA-Factory YAML the \"auto\" values come "
                   "from (per_device_train_batch_size, gradient_accumulation_steps, bf16/fp16, cutoff_len, ...).")
@click.option("--micro-batch", type=int, default=None, help="per_device_train_batch_size for \"auto\" [1].")
@click.option("--grad-accum", type=int, default=None, help="gradient_accumulation_steps for \"auto\" [1].")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="bf16 / fp16 for \"auto\" enabled flags [bf16 where the GPU has it, else fp16].")
@click.option("--allocator", type=click.Choice(ALLOCATORS), default=None,
              help="CUDA allocator the run will have, for the memory verdict [the --plan's; else default for an "
                   "\"auto\" (HF Trainer) config, expandable (qwen-ds launch) otherwise].")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object: ok, problems (path, message, rule, severity), memory, filled.")
def command(config: str, as_json: bool, **kw) -> None:
    result = api.validate(config, **kw)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        if result.problems:
            click.echo(api.problems_text(result.problems, config), err=True)
        if result.verdict_text():
            click.echo(result.verdict_text())
    if result.exit_code:
        sys.exit(result.exit_code)
