"""The launch use case: from what the user typed to a checked launch (``prepare``), and running it
(``Prepared.run``). `qwen-ds launch` only parses its flags, calls these and prints."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..hostfile import Hostfile, read_hostfile
from .build import LaunchRequest, LaunchSpec, build, parse_master_port
from .envfile import parse_env_items, rank_env
from .payload import FLAG
from .passthrough import parse_bind_core_list, parse_ssh_port, split_launcher_args
from .remote import check_remote, pdsh_argv


@dataclass(frozen=True)
class Prepared:
    """A launch built as data and checked: ``problems`` (one line each) empty means ready."""

    request: LaunchRequest
    spec: LaunchSpec
    remote: str | None  # what pdsh hands each node's shell, for the dry run
    problems: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # what does not stop a launch (OpenMPI's max_slots= in the hostfile)

    def dry_run_text(self) -> str:
        """The command, what every rank runs, its environment and the remote command (stdout of --dry-run)."""
        job = self.spec.payload
        lines = ["# command", shlex.join(self.spec.argv),
                 f"# every rank runs (qwen_ds.launch.rank decodes it from {FLAG}; DeepSpeed adds --local_rank)",
                 shlex.join([self.request.python, "-u"] + (["-m", job.target] if job.kind != "script" else [job.target])
                            + list(job.args)),
                 "# environment set in every rank (shell-quoted)"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in sorted(job.env.items())]
        req = self.request
        if req.launcher_args:
            tool = {"pdsh": "pdsh", "slurm": "srun"}.get(req.launcher, "mpirun")
            lines += [f"# --launcher-args: the words DeepSpeed's runner inserts into the {tool} command line "
                      "(shell-quoted)", shlex.join(req.launcher_args)]
            if req.launcher == "pdsh":
                lines += ["# pdsh command: DeepSpeed's runner starts it without a shell, then the remote command",
                          shlex.join(pdsh_argv(self.spec.resources, req.launcher_args))]
        if self.remote is not None:
            lines += ["# remote command: what pdsh hands each node's shell (pdsh replaces %n with the node's rank)",
                      self.remote]
        return "\n".join(lines)

    def run(self, log: Callable[..., None]) -> int:
        """Start it and supervise the ranks; the exit code of the job."""
        from .run import run

        req, hf = self.request, self.request.hostfile
        ranks = expected_ranks(hf, req.launcher, req.node_rank, bool(req.include or req.exclude))
        owns_shm = self.spec.local and (hf.single_host or req.node_rank == 0)
        return run(self.spec, Path(req.run_dir), ranks, log=log, owns_shm=owns_shm)


def expected_ranks(hf: Hostfile, launcher: str, node_rank: int | None, filtered: bool) -> list[int]:
    if filtered:
        return []
    if hf.single_host:
        return list(range(hf.hosts[0].slots))
    if launcher == "no-ssh":
        start = sum(h.slots for h in hf.hosts[:node_rank])
        return list(range(start, start + hf.hosts[node_rank].slots))
    return []  # remote ranks report through the backend's exit code


def prepare(hostfile: str, config: str, entry: tuple[str, ...], *, plan: str | None = None, launcher: str = "pdsh",
            node_rank: int | None = None, include: str | None = None, exclude: str | None = None,
            master_addr: str | None = None, master_port: str = "29500", env_items: tuple[str, ...] = (),
            run_dir: str | None = None, launcher_args: str | None = None, ssh_port: str | None = None,
            bind_cores_to_rank: bool = False, bind_core_list: str | None = None) -> Prepared:
    """Read the hostfile and --env items, build the launch, check the remote side and run preflight."""
    from .preflight import preflight

    hf = read_hostfile(hostfile)
    user_env = parse_env_items(env_items)
    port = parse_master_port(master_port, hf)
    words = split_launcher_args(launcher_args, launcher)
    parse_bind_core_list(bind_core_list)
    if bind_cores_to_rank and "KMP_AFFINITY" in os.environ:
        raise InputError("--bind-cores-to-rank: KMP_AFFINITY is set in this environment and DeepSpeed refuses to bind "
                         "cores with numactl while it is (it fights numactl over the cores): unset KMP_AFFINITY")
    run_dir = run_dir or str(Path("qwen-ds-runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    req = LaunchRequest(hostfile=hf, config=config, plan=plan, entry=tuple(entry), run_dir=str(Path(run_dir).resolve()),
                        launcher=launcher, node_rank=node_rank, include=include, exclude=exclude,
                        master_addr=master_addr, master_port=port, env=rank_env(user_env), launcher_args=words,
                        ssh_port=parse_ssh_port(ssh_port), bind_cores_to_rank=bind_cores_to_rank,
                        bind_core_list=bind_core_list)
    spec = build(req)
    remote = check_remote(req, spec, dict(os.environ), os.getcwd())
    return Prepared(req, spec, remote, tuple(preflight(req, spec)), hf.warnings)
