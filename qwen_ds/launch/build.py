"""build(request) -> LaunchSpec(argv, payload): the whole launch as data, no side effects.

Every rank runs through qwen_ds.launch.rank (a thin wrapper: rank-prefixed output, signal
forwarding, a status file per rank), started by DeepSpeed's own runner
(`python -m deepspeed.launcher.runner`): the status files let `launch` tell a finished job from
one whose launcher died by a signal, which DeepSpeed's runner reports as exit 0. The wrapper's
job (entry, arguments, environment, run dir) is one shell-inert token (qwen_ds.launch.payload).
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, one_line
from ..hostfile import Hostfile
from .passthrough import parse_bind_core_list
from .payload import FLAG, MODULE, RankPayload
from .ports import free_port
from .remote import active_resources

LAUNCHERS = ("pdsh", "openmpi", "mvapich", "mpich", "impi", "slurm", "no-ssh")
BUILTIN = {"train": "qwen_ds.runtime.train", "infer": "qwen_ds.runtime.infer"}
BACKEND_BINARY = {"pdsh": "pdsh", "openmpi": "mpirun", "mvapich": "mpirun", "mpich": "mpirun", "impi": "mpirun",
                  "slurm": "srun"}
MPI = ("openmpi", "mvapich", "mpich", "impi")  # their runners refuse --include / --exclude (validate_args)
EQUAL_SLOTS = ("mvapich", "mpich", "impi", "slurm")  # their get_cmd refuses unequal slots per host
RANK_SCRIPT = str(Path(__file__).with_name("rank_script.py"))  # the wrapper as a file, for MPICH's helper


@dataclass(frozen=True)
class LaunchRequest:
    hostfile: Hostfile
    config: str
    entry: tuple[str, ...]  # ("train", ...) | ("-m", "module", ...) | ("script.py", ...)
    run_dir: str  # status files and logs of this run
    plan: str | None = None
    launcher: str = "pdsh"
    node_rank: int | None = None
    include: str | None = None
    exclude: str | None = None
    master_addr: str | None = None
    master_port: int = 29500
    env: dict = field(default_factory=dict)
    python: str = sys.executable
    launcher_args: tuple[str, ...] = ()  # passthrough.split_launcher_args: the words DeepSpeed inserts
    ssh_port: int | None = None
    bind_cores_to_rank: bool = False
    bind_core_list: str | None = None  # checked by passthrough.parse_bind_core_list


@dataclass(frozen=True)
class LaunchSpec:
    argv: tuple[str, ...]
    payload: RankPayload  # what every rank runs, with its environment
    local: bool  # DeepSpeed's runner starts the ranks on this host itself (one active host, or no-ssh)
    master_addr: str
    entry_kind: str  # builtin | module | script
    entry_target: str
    resources: dict  # host -> slot ids after --include / --exclude (DeepSpeed's world_info)


# what a rendezvous address may be: a host name, IPv4 or IPv6 (it is pasted into remote shells)
MASTER_ADDR = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)")


def resolve_entry(entry: tuple[str, ...], config: str, plan: str | None) -> tuple[str, str, list[str]]:
    """(kind, target, args): the built-in runtime gets --config/--plan added."""
    if not entry:
        raise InputError("launch needs an ENTRY: train, infer, a script path, or -m MODULE (then its arguments)")
    head, rest = entry[0], list(entry[1:])
    if head in BUILTIN:
        extra = ["--config", config] + (["--plan", plan] if plan else [])
        return "builtin", BUILTIN[head], extra + rest
    if head in ("-m", "--module"):
        if not rest:
            raise InputError("launch -m needs a module name, e.g. launch ... -m my_pkg.train --epochs 1")
        return "module", rest[0], rest[1:]
    return "script", head, rest


def parse_master_port(value: str, hostfile) -> int:
    """--master-port: a number, or 'auto' (a port free on this host now) when this host is the only one;
    with several hosts every node must be given the same number, which no single host can pick."""
    text = str(value).strip().lower()
    if text == "auto":
        if not hostfile.single_host:
            raise InputError(f"--master-port auto: {hostfile.path} has {hostfile.nodes} hosts and every node must use "
                             "the same port; pass a number, e.g. --master-port 29500")
        return free_port()
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--master-port {value!r}: pass a TCP port 1-65535 or 'auto'") from None


def build(req: LaunchRequest) -> LaunchSpec:
    if req.launcher not in LAUNCHERS:
        raise InputError(f"--launcher {req.launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    hf = req.hostfile
    if not 1 <= req.master_port <= 65535:
        raise InputError(f"--master-port {req.master_port}: choose a TCP port 1-65535")
    if req.include and req.exclude:
        raise InputError("--include and --exclude are mutually exclusive (DeepSpeed refuses both); keep one")
    no_ssh = req.launcher == "no-ssh"
    if no_ssh:
        if req.node_rank is None or not 0 <= req.node_rank < hf.nodes:
            raise InputError(f"--launcher no-ssh needs --node-rank 0..{hf.nodes - 1} (this node's line in {hf.path})")
    elif req.node_rank is not None:
        raise InputError("--node-rank is only for --launcher no-ssh (the other launchers start every node themselves)")
    if req.launcher in EQUAL_SLOTS and not hf.equal_slots:
        raise InputError(f"--launcher {req.launcher} needs the same slots= on every host of {hf.path}")
    kind, target, args = resolve_entry(req.entry, req.config, req.plan)
    resources = active_resources([(h.name, h.slots) for h in hf.hosts], req.include, req.exclude)
    single = hf.single_host
    master = req.master_addr if req.master_addr is not None else (
        "127.0.0.1" if single else hf.hosts[0].name.split("@")[-1])
    if not MASTER_ADDR.fullmatch(master):
        raise InputError(f"--master-addr {one_line(master)!r}: not a host name or IP address (letters, digits, '.', "
                         f"'-', or an IPv6 address); it reaches every node's shell under --launcher {req.launcher}")
    argv = [req.python, "-u", "-m", "deepspeed.launcher.runner", "--hostfile", hf.path,
            "--master_addr", master, "--master_port", str(req.master_port)]
    if single:
        argv.append("--no_ssh_check")  # DeepSpeed ssh-checks the first host even for a single localhost line
    if no_ssh:
        argv += ["--no_ssh", "--node_rank", str(req.node_rank)]
    elif not single:
        argv += ["--launcher", "mvapich" if req.launcher == "mvapich" else req.launcher]
    if req.include:
        argv += ["--include", req.include]
    if req.exclude:
        argv += ["--exclude", req.exclude]
    local = no_ssh or len(resources) == 1  # DeepSpeed's runner goes multi-node only for > 1 active host
    argv += passthrough_argv(req, local, resources)
    payload = RankPayload(run_dir=req.run_dir, kind=kind, target=target, args=tuple(args), env=dict(req.env))
    if req.launcher == "slurm" and not local:
        # DeepSpeed 0.19.8's SlurmRunner ignores --module and runs `python -u SCRIPT`: the module goes in as
        # the script "-m" (after "--", so the runner's parser takes it as the positional) and its name
        argv += ["--", "-m", MODULE, FLAG, payload.encode()]
    elif req.launcher == "mpich" and not local:
        # its helper cannot run a module (rank_script.py says why): the wrapper goes in as a script file
        argv += [RANK_SCRIPT, FLAG, payload.encode()]
    else:
        # the rank wrapper is the "script"; DeepSpeed's launch.py adds --local_rank=N after it
        argv += ["--module", MODULE, FLAG, payload.encode()]
    return LaunchSpec(tuple(argv), payload, local, master, kind, target, resources)


def passthrough_argv(req: LaunchRequest, local: bool, resources: dict) -> list[str]:
    """The runner options of qwen_ds.launch.passthrough, refused where DeepSpeed 0.19.8 would ignore them
    (silently dropping what the user asked for) or fail on them. `--opt=value` keeps a value that starts
    with '-' from being read as an option by the runner's argparse."""
    out: list[str] = []
    here = "one active host or --launcher no-ssh: DeepSpeed starts the ranks on this host itself"
    if req.include or req.exclude:
        if req.launcher in MPI and not local:
            raise InputError(f"--launcher {req.launcher} cannot take --include / --exclude over several hosts "
                             "(DeepSpeed's runner refuses it); edit the hostfile instead")
    if req.launcher_args:
        if local:
            raise InputError(f"--launcher-args: {here} and ignores them; drop --launcher-args")
        out.append(f"--launcher_args={shlex.join(req.launcher_args)}")
    if req.ssh_port is not None:
        if req.launcher == "no-ssh" or req.hostfile.single_host:
            raise InputError(f"--ssh-port {req.ssh_port}: nothing uses ssh here (one host in {req.hostfile.path}, or "
                             "--launcher no-ssh); drop --ssh-port")
        out += ["--ssh_port", str(req.ssh_port)]
    if req.bind_core_list is not None and not req.bind_cores_to_rank:
        raise InputError(f"--bind-core-list {req.bind_core_list}: DeepSpeed only reads it with --bind-cores-to-rank; "
                         "add that flag or drop the list")
    if req.bind_cores_to_rank:
        if not local and req.launcher != "impi":
            raise InputError(f"--bind-cores-to-rank: DeepSpeed 0.19.8's --launcher {req.launcher} runner ignores it "
                             "over several hosts (only its impi runner and the single-host path bind cores); use "
                             "--launcher impi or no-ssh, or drop it")
        out.append("--bind_cores_to_rank")
        if req.bind_core_list is not None:
            cores = parse_bind_core_list(req.bind_core_list)
            most = max(len(ids) for ids in resources.values())
            if len(cores) < most:
                raise InputError(f"--bind-core-list {req.bind_core_list}: {len(cores)} cores for {most} ranks on a "
                                 "host; DeepSpeed needs at least one core per rank: list more cores")
            out.append(f"--bind_core_list={req.bind_core_list}")
    return out
