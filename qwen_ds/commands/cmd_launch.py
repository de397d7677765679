"""`qwen-ds launch`: DeepSpeed's own launcher across a hostfile, checked first, supervised after."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import click

from ..errors import EXIT_BAD_INPUT
from ..hostfile import read_hostfile
from ..launch import LAUNCHERS, LaunchRequest, LaunchSpec, build
from ..launch.build import parse_master_port
from ..launch.envfile import parse_env_items, rank_env
from ..launch.payload import FLAG
from ..launch.remote import check_remote


def print_dry_run(spec: LaunchSpec, remote: str | None, problems: list[str], python: str) -> None:
    job = spec.payload
    click.echo("# command")
    click.echo(shlex.join(spec.argv))
    click.echo(f"# every rank runs (qwen_ds.launch.rank decodes it from {FLAG}; DeepSpeed adds --local_rank)")
    click.echo(shlex.join([python, "-u"] + (["-m", job.target] if job.kind != "script" else [job.target])
                          + list(job.args)))
    click.echo("# environment set in every rank (shell-quoted)")
    for k, v in sorted(job.env.items()):
        click.echo(f"{k}={shlex.quote(v)}")
    if remote is not None:
        click.echo("# remote command: what pdsh hands each node's shell (pdsh replaces %n with the node's rank)")
        click.echo(remote)
    for p in problems:
        click.echo(f"preflight: {p}", err=True)


def expected_ranks(hf, launcher: str, node_rank: int | None, filtered: bool) -> list[int]:
    if filtered:
        return []
    if hf.single_host:
        return list(range(hf.hosts[0].slots))
    if launcher == "no-ssh":
        start = sum(h.slots for h in hf.hosts[:node_rank])
        return list(range(start, start + hf.hosts[node_rank].slots))
    return []  # remote ranks report through the backend's exit code


@click.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               help="Launch ENTRY (train | infer | a script | -m MODULE, then its arguments) "
                    "with DeepSpeed's launcher.")
@click.option("--hostfile", required=True, type=click.Path(dir_okay=False), help="DeepSpeed hostfile ('host slots=N').")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="ds_config.json.")
@click.option("--plan", default=None, type=click.Path(dir_okay=False),
              help="plan.json from gen-config (checked against the hostfile).")
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="pdsh", show_default=True,
              help="Backend for several hosts; no-ssh runs this node only (start one per node with --node-rank).")
@click.option("--node-rank", type=int, default=None, help="This node's line in the hostfile (--launcher no-ssh).")
@click.option("--include", default=None, help="DeepSpeed resource filter, e.g. 'w0@w1:0,2'.")
@click.option("--exclude", default=None, help="DeepSpeed resource filter, e.g. 'w1:0'.")
@click.option("--master-addr", default=None, help="Rendezvous address [127.0.0.1 for one host, else the first host].")
@click.option("--master-port", default="29500", show_default=True,
              help="Rendezvous port; 'auto' picks a free one (one host, or no-ssh node 0 starting first).")
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Environment for every rank (repeatable).")
@click.option("--run-dir", default=None, help="Where rank status files go [./qwen-ds-runs/<time>-<pid>].")
@click.option("--dry-run", is_flag=True, help="Print the command lines and the env file, start nothing.")
@click.argument("entry", nargs=-1, type=click.UNPROCESSED)
def command(hostfile, config, plan, launcher, node_rank, include, exclude, master_addr, master_port, env_items, run_dir,
            dry_run, entry) -> None:
    hf = read_hostfile(hostfile)
    user_env = parse_env_items(env_items)
    master_port = parse_master_port(master_port, hf)
    run_dir = run_dir or str(Path("qwen-ds-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    req = LaunchRequest(hostfile=hf, config=config, plan=plan, entry=tuple(entry), run_dir=str(Path(run_dir).resolve()),
                        launcher=launcher, node_rank=node_rank, include=include, exclude=exclude,
                        master_addr=master_addr,
                        master_port=master_port, env=rank_env(user_env))
    spec = build(req)
    remote = check_remote(req, spec, dict(os.environ), os.getcwd())
    from ..launch.preflight import preflight

    problems = preflight(req, spec)
    if dry_run:
        print_dry_run(spec, remote, problems, req.python)
        return
    if problems:
        for p in problems:
            click.echo(f"error: preflight: {p}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    from ..launch.run import run

    ranks = expected_ranks(hf, launcher, node_rank, bool(include or exclude))
    owns_shm = spec.local and (hf.single_host or node_rank == 0)
    rc = run(spec, Path(req.run_dir), ranks, log=lambda *a, **k: click.echo(" ".join(map(str, a)), err=True),
             owns_shm=owns_shm)
    sys.exit(rc)
