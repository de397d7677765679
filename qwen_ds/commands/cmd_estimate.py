"""`qwen-ds estimate`: memory per GPU and per node for one plan, term by term."""

from __future__ import annotations

import json
import sys

import click

from .. import api
from ..errors import EXIT_DOES_NOT_FIT
from .options import cluster_options, plan_options


@click.command("estimate", help="Memory per GPU and per node for one plan, term by term. "
                                "Exit 0 fits, 3 does not fit, 2 bad input.")
@cluster_options
@plan_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (gpu_total_bytes, gpu_reserved_bytes, cpu_total_bytes_per_node, "
                   "fits, terms, ...).")
def command(as_json: bool, model: str, gpu: str, **kw) -> None:
    result = api.estimate(model, gpu, **kw)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    if not result.fits:
        sys.exit(EXIT_DOES_NOT_FIT)
