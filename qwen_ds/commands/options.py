"""The click options shared by estimate / plan / gen-config. The plan knobs are generated from
qwen_ds/knobs.py, so a knob's flag, default and help are written once."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..api import SearchOptions
from ..knobs import KNOBS, SEARCHED, Knob


def _opts(*decorators: Callable) -> Callable:
    def wrap(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


cluster_options = _opts(
    click.option("--model", "-m", required=True,
                 help="Preset name (qwen-ds models), config.json path, HF model directory, "
                      "or HF id in the local cache."),
    click.option("--gpu", "-g", required=True,
                 help="GPU type from the catalog (qwen-ds gpus), e.g. A100-80GB, H100-SXM, V100-32GB."),
    click.option("--nodes", type=int, default=None, help="Number of nodes [1, or from --hostfile]."),
    click.option("--gpus-per-node", type=int, default=None, help="GPUs per node [8, or from --hostfile]."),
    click.option("--hostfile", type=click.Path(dir_okay=False), default=None,
                 help="DeepSpeed hostfile ('host slots=N' lines): gives --nodes and --gpus-per-node."),
)


def _option(k: Knob) -> Callable:
    if k.kind is bool:
        name = k.flag[2:]
        return click.option(f"--{name}/--no-{name}", k.name, default=k.default, show_default=True, help=k.help)
    if isinstance(k.kind, tuple) and all(isinstance(v, int) for v in k.kind):
        ptype: Any = click.IntRange(min(k.kind), max(k.kind))
    elif isinstance(k.kind, tuple):
        ptype = click.Choice(k.kind)
    else:
        ptype = k.kind
    show = k.default is not None
    return click.option(k.flag, k.name, type=ptype, default=k.default, show_default=show, help=k.help)


plan_options = _opts(*(_option(k) for k in KNOBS))

planner_options = _opts(
    click.option("--global-batch", type=int, default=None,
                 help="Sequences per optimizer step (fixes micro x grad-accum x dp)."),
    click.option("--headroom", type=float, default=0.92, show_default=True, help="Usable fraction of GPU memory."),
    click.option("--cpu-mem-per-node", type=float, default=None,
                 help="CPU RAM per node in GiB for offload [unlimited, reported]."),
    click.option("--allow-nvme", is_flag=True, help="Also consider NVMe offload."),
    click.option("--allow-tp", is_flag=True, help="Also consider tensor parallelism for training (AutoTP)."),
    click.option("--allow-pp", is_flag=True,
                 help="Also consider pipeline parallelism for training (the built-in trainer builds the stages of "
                      "Qwen3, Qwen3-MoE and Qwen3-Next; other models need your own PipelineModule script)."),
    click.option("--inter-node-gbps", type=float, default=None,
                 help="Network between nodes, Gbit/s per node [200 x GPUs per node]."),
    click.option("--compute-efficiency", type=float, default=0.55, show_default=True,
                 help="Achieved / peak tensor TFLOP/s."),
)
SEARCH_FLAGS = ("global_batch", "headroom", "cpu_mem_per_node", "allow_nvme", "allow_tp", "allow_pp", "inter_node_gbps",
                "compute_efficiency")


def search_options(kw: dict[str, Any]) -> SearchOptions:
    """Pops the planner flags out of ``kw``."""
    return SearchOptions(**{k: kw.pop(k) for k in SEARCH_FLAGS})


def pinned(ctx: click.Context) -> list[str]:
    """The searched knobs typed on the command line; the planner chooses the rest."""
    out = []
    for key in SEARCHED:
        src = ctx.get_parameter_source(key)
        if src is not None and src.name == "COMMANDLINE":
            out.append(key)
    return out
