"""`qwen-ds plan`: the fastest plans that fit, the families that do not and why."""

from __future__ import annotations

import json
import sys

import click

from .. import api
from ..errors import EXIT_DOES_NOT_FIT
from .options import cluster_options, pinned, plan_options, planner_options, search_options


@click.command("plan", help="Find the fastest plans that fit: candidates filtered by the estimator "
                            "and ranked by a step-time model.")
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
def command(ctx: click.Context, top: int, explain: bool, chart: str | None, force: bool, as_json: bool, model: str,
            gpu: str,
            **kw) -> None:
    if chart:
        from ..chart import chart_format

        chart_format(chart, force)  # before the search: a bad name or an existing file fails first
    options = search_options(kw)
    result = api.plan(model, gpu, pinned=pinned(ctx), options=options, **kw)
    click.echo(json.dumps(result.to_json(top), indent=2) if as_json else result.text(top, explain))
    if chart and result.accepted:
        from ..chart import memory_chart

        memory_chart(result.accepted[:min(top, 6)], result.inputs.cluster, options.headroom, chart, force)
    if not result.accepted:
        sys.exit(EXIT_DOES_NOT_FIT)
