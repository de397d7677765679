"""`qwen-ds gpus`: the GPU catalog."""

from __future__ import annotations

import json

import click

from ..format import table
from ..hardware import gpu_entries
from ..units import GIB


@click.command("gpus", help="List the GPU catalog (memory, compute capability, TFLOP/s, bandwidths), "
                            "each figure sourced.")
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON, sources included.")
def command(as_json: bool) -> None:
    entries = gpu_entries()
    if as_json:
        click.echo(json.dumps(list(entries), indent=2))
        return

    def num(x: object) -> str:
        return "-" if x is None else f"{x:g}"

    click.echo(table(
        ["gpu", "memory GiB", "CC", "bf16", "fp8", "bf16 TF/s", "fp16 TF/s", "fp8 TF/s", "HBM GB/s", "NVLink GB/s"],
        [[e["name"], f"{e['memory_bytes'] / GIB:.1f}", e["compute_capability"], "yes" if e["bf16"] else "no",
          "yes" if e["fp8"] else "no", num(e["bf16_tflops"]), num(e["fp16_tflops"]), num(e["fp8_tflops"]),
          num(e["hbm_gbps"]), num(e["nvlink_gbps"])] for e in entries],
        "lrlllrrrrr",
    ))
    click.echo("\nDense (non-sparse) tensor TFLOP/s; sources per figure: qwen-ds gpus --json")
