"""`qwen-ds models`: presets with total and active parameters."""

from __future__ import annotations

import json

import click

from ..format import human_count, table
from ..models import count_params, load_model, preset_names
from ..models.registry import preset_entry


@click.command("models", help="List model presets with total and active parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per preset as a list.")
def command(as_json: bool) -> None:
    rows = []
    for name in preset_names():
        spec = load_model(name)
        c = count_params(spec)
        rows.append({
            "name": spec.name, "family": spec.family, "layers": spec.num_layers, "hidden": spec.hidden_size,
            "experts": f"{spec.num_experts}/{spec.experts_per_token}" if spec.num_experts else "-",
            "total_params": c.total, "active_params": c.active, "non_embedding_params": c.non_embedding,
            "hf_id": (preset_entry(name) or {}).get("hf_id", ""),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(table(
        ["model", "family", "layers", "hidden", "experts/top-k", "total", "active", "total params"],
        [[r["name"], r["family"], str(r["layers"]), str(r["hidden"]), r["experts"], human_count(r["total_params"]),
          human_count(r["active_params"]), f"{r['total_params']:,}"] for r in rows],
        "llrrrrrr",
    ))
