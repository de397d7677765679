"""`qwen-ds hostfile check FILE` and `qwen-ds hostfile from-slurm`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import InputError, one_line
from ..format import table
from ..hostfile import expand_slurm_nodelist, hostfile_text, parse_hostfile_text, read_hostfile
from ..publish import publish_file


@click.group("hostfile", help="Check a DeepSpeed hostfile, or write one from a Slurm allocation.")
def command() -> None:
    pass


@command.command("check", help="Parse FILE with DeepSpeed's rules plus ours; print nodes, GPUs and world size.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True)
def check(file: str, as_json: bool) -> None:
    hf = read_hostfile(file)
    info = {"hostfile": file, "nodes": hf.nodes, "world_size": hf.world_size, "equal_slots": hf.equal_slots,
            "gpus_per_node": hf.hosts[0].slots if hf.equal_slots else None,
            "hosts": [{"node_rank": i, "host": h.name, "slots": h.slots, "line": h.line}
                      for i, h in enumerate(hf.hosts)], "warnings": list(hf.warnings)}
    for w in hf.warnings:  # accepted (DeepSpeed reads it so), but not what the file may seem to say
        click.echo(f"warning: {w}", err=True)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(table(["node rank", "host", "slots", "line"],
                     [[str(i), h.name, str(h.slots), str(h.line)] for i, h in enumerate(hf.hosts)], "rlrr"))
    shape = f"{hf.nodes} x {hf.hosts[0].slots}" if hf.equal_slots else f"{hf.nodes} nodes (unequal slots)"
    click.echo(f"\n{shape} = world size {hf.world_size}; master (node rank 0): {hf.hosts[0].name}")


@command.command("from-slurm", help="Write a hostfile from SLURM_JOB_NODELIST (bracket ranges expanded).")
@click.option("--nodelist", default=None, help="Node list in Slurm syntax [$SLURM_JOB_NODELIST].")
@click.option("--gpus-per-node", type=int, default=None,
              help="Slots per host [$SLURM_GPUS_ON_NODE or $SLURM_GPUS_PER_NODE].")
@click.option("--output", "-o", default="-", help="File to write, '-' for stdout.")
@click.option("--force", is_flag=True, help="Overwrite an existing --output.")
def from_slurm(nodelist: str | None, gpus_per_node: int | None, output: str, force: bool) -> None:
    nodelist = nodelist or os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise InputError("no node list: run inside a Slurm allocation (SLURM_JOB_NODELIST) "
                         "or pass --nodelist 'gpu[01-04]'")
    if gpus_per_node is None:
        raw = os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get("SLURM_GPUS_PER_NODE", "")
        raw = raw.split(":")[-1].split("(")[0]
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 9):  # 9: int() stays cheap, the range check follows
            raise InputError(f"no GPU count in SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE ({one_line(raw[:20])!r}); "
                             "pass --gpus-per-node")
        gpus_per_node = int(raw)
    text = hostfile_text(expand_slurm_nodelist(nodelist), gpus_per_node)
    parse_hostfile_text(text, "generated")  # our own rules hold for what we write
    if output == "-":
        click.echo(text, nl=False)
        return
    out = Path(output)
    check_output(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only file system, a directory we may not write
        raise InputError(f"-o {one_line(out)}: cannot create {one_line(out.parent)} ({one_line(exc.strerror or exc)}); "
                         "choose a writable path") from None
    # no-clobber without --force, checked when the name is taken (a dangling link counts), whole or not at all
    publish_file(out, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), force, "-o")
    click.echo(f"wrote {out}: {text.count(chr(10))} hosts x {gpus_per_node} slots", err=True)


def check_output(out: Path) -> None:
    """-o names a file in a directory."""
    if out.is_dir():
        raise InputError(f"-o {one_line(out)} is a directory; name a file, e.g. -o {one_line(out / 'hostfile')}")
    parent = next(p for p in out.absolute().parents if p.exists())  # '/' always exists
    if not parent.is_dir():
        raise InputError(f"-o {one_line(out)}: {one_line(parent)} is a file, not a directory; "
                         "choose a path in a directory")
