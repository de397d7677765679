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
@click.option("--compare-finetune", is_flag=True,
              help="Training: the fastest plan of each fine-tuning method (full, lora, qlora, freeze) side by side, "
                   "with the other knobs as given.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def command(ctx: click.Context, top: int, explain: bool, chart: str | None, force: bool, compare_finetune: bool,
            as_json: bool, model: str, gpu: str, **kw) -> None:
    if compare_finetune:
        _compare(ctx, chart, as_json, model, gpu, kw)
        return
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


def _compare(ctx: click.Context, chart: str | None, as_json: bool, model: str, gpu: str, kw: dict) -> None:
    from ..errors import InputError

    given = ctx.get_parameter_source("finetune")
    if given is not None and given.name == "COMMANDLINE":
        raise InputError(f"--compare-finetune with --finetune {kw['finetune']}: the comparison plans every method; "
                         "drop one of the two")
    if kw.get("mode") == "infer":
        raise InputError("--compare-finetune with --mode infer: fine-tuning methods are for training")
    if chart:
        raise InputError("--compare-finetune with --chart: the chart draws one method's plans; drop one of the two")
    result = api.compare_finetune(model, gpu, pinned=pinned(ctx), options=search_options(kw), **kw)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    if not any(s is not None and s.best is not None for _, s, _ in result.searches):
        sys.exit(EXIT_DOES_NOT_FIT)
