"""`qwen-ds launch`: DeepSpeed's own launcher across a hostfile, checked first, supervised after
(the use case: qwen_ds/launch/prepare.py)."""

from __future__ import annotations

import sys

import click

from ..errors import EXIT_BAD_INPUT
from ..launch import LAUNCHERS


@click.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
               help="Launch ENTRY (train | infer | a script | -m MODULE, then its arguments) "
                    "with DeepSpeed's launcher.")
@click.option("--hostfile", required=True, type=click.Path(dir_okay=False), help="DeepSpeed hostfile ('host slots=N').")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="ds_config.json.")
@click.option("--plan", default=None, type=click.Path(dir_okay=False),
              help="plan.json from gen-config (checked against the hostfile).")
@click.option("--launcher", type=click.Choice(LAUNCHERS), default="pdsh", show_default=True,
              help="Backend for several hosts (mpich / impi: the MPICH or Intel MPI mpirun on PATH; equal slots "
                   "per host); no-ssh runs this node only (start one per node with --node-rank).")
@click.option("--node-rank", type=int, default=None, help="This node's line in the hostfile (--launcher no-ssh).")
@click.option("--include", default=None, help="DeepSpeed resource filter, e.g. 'w0@w1:0,2'.")
@click.option("--exclude", default=None, help="DeepSpeed resource filter, e.g. 'w1:0'.")
@click.option("--master-addr", default=None, help="Rendezvous address [127.0.0.1 for one host, else the first host].")
@click.option("--master-port", default="29500", show_default=True,
              help="Rendezvous port; 'auto' picks a free one (one host, or no-ssh node 0 starting first).")
@click.option("--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Environment for every rank (repeatable).")
@click.option("--launcher-args", default=None, metavar="'OPTS'",
              help="Options for the backend command (pdsh / mpirun / srun) as one quoted string; DeepSpeed splits it "
                   "with shlex and inserts the words (--launcher_args). pdsh: -l USER, -t/-u SECONDS, -f N, -S, -b, "
                   "-d, -N; MPI / Slurm: options of plain words, first one an option, e.g. '--mca "
                   "btl_tcp_if_include ib0'. Several hosts only.")
@click.option("--ssh-port", default=None, metavar="N",
              help="The nodes' sshd port 1-65535 (--ssh_port): DeepSpeed's ssh check and pdsh's ssh. Several hosts "
                   "only.")
@click.option("--bind-cores-to-rank", is_flag=True,
              help="Bind each rank to its own CPU cores with numactl and set OMP_NUM_THREADS (--bind_cores_to_rank); "
                   "DeepSpeed does it on one host, under no-ssh and under --launcher impi.")
@click.option("--bind-core-list", default=None, metavar="LIST",
              help="Cores shared out by --bind-cores-to-rank, ascending ids and ranges, e.g. 0-31,64-95 "
                   "(--bind_core_list) [every physical core].")
@click.option("--run-dir", default=None, help="Where rank status files go [./qwen-ds-runs/<time>-<pid>].")
@click.option("--dry-run", is_flag=True, help="Print the command lines and the env file, start nothing.")
@click.argument("entry", nargs=-1, type=click.UNPROCESSED)
def command(hostfile, config, plan, launcher, node_rank, include, exclude, master_addr, master_port, env_items,
            launcher_args, ssh_port, bind_cores_to_rank, bind_core_list, run_dir, dry_run, entry) -> None:
    from ..launch.prepare import prepare

    launch = prepare(hostfile, config, tuple(entry), plan=plan, launcher=launcher, node_rank=node_rank, include=include,
                     exclude=exclude, master_addr=master_addr, master_port=master_port, env_items=env_items,
                     run_dir=run_dir, launcher_args=launcher_args, ssh_port=ssh_port,
                     bind_cores_to_rank=bind_cores_to_rank, bind_core_list=bind_core_list)
    for w in launch.warnings:
        click.echo(f"warning: {w}", err=True)
    if dry_run:
        click.echo(launch.dry_run_text())
        for p in launch.problems:
            click.echo(f"preflight: {p}", err=True)
        return
    if launch.problems:
        for p in launch.problems:
            click.echo(f"error: preflight: {p}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(launch.run(log=lambda *a, **k: click.echo(" ".join(map(str, a)), err=True)))
