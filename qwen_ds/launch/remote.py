"""What DeepSpeed 0.19.8's multi-node runners hand to a remote shell or to mpirun / srun, and whether
each value gets there byte for byte (reference/deepspeed.md §4; deepspeed/launcher/runner.py and
multinode_runner.py).

The rank's own command line is always safe: it is one base64url token (qwen_ds.launch.payload).
What remains is what DeepSpeed adds by itself, and those values are checked here, never rewritten:
- exports: every variable of the launching environment whose name starts with one of
  EXPORT_PREFIXES (PYTHONPATH is first prefixed with the working directory), then each line of
  `.deepspeed_env` in ~ and in the working directory. `add_export` strips the value and wraps it in
  double quotes when it has a character outside [\\w@%+=:,./-];
- pdsh: one string, `export K=V; ... cd CWD; PYTHON -u -m deepspeed.launcher.launch ... ARGS`, which
  pdsh expands (%h host, %u user, %n rank, %% -> %) and the remote login shell runs;
- openmpi / mvapich / mpich / impi: `-x K=V` / `-env K=V` / `-genv K=V` / `-genv K V` argv items,
  DeepSpeed's double quotes kept literally;
- slurm: one `--export=ALL,K=V,...` item: quotes kept, and ',' separates variables.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, one_line
from .envfile import KEY, deepspeed_env_lines

EXPORT_PREFIXES = ("MLFLOW", "PYTHON", "MV2", "UCX", "NCCL")  # runner.EXPORT_ENVS + the CUDA accelerator's
NEEDS_QUOTES = re.compile(r"[^\w@%+=:,./-]")  # add_export's test
SHELL_ACTIVE_IN_DQUOTES = '$`"\\'
PDSH_EXPANDS = re.compile(r"%[hun%]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")  # means itself, unquoted, to sh and to pdsh
BACKEND_TOOL = {"openmpi": "mpirun -x", "mvapich": "mpirun -env", "mpich": "mpirun -genv", "impi": "mpirun -genv",
                "slurm": "srun --export"}
PDSH_MAX_FAN_OUT = 1024  # deepspeed.launcher.constants


@dataclass(frozen=True)
class Export:
    key: str  # as DeepSpeed will export it (stripped)
    value: str  # the value the user means: the variable's value, or the file's value without its line end
    source: str  # where it comes from, for the error message
    stripped_by_deepspeed: bool = False  # file values: DeepSpeed's strip() is the file format's meaning


def active_resources(hosts: list[tuple[str, int]], include: str | None, exclude: str | None) -> dict[str, list[int]]:
    """host -> slot ids after --include / --exclude, in hostfile order: DeepSpeed's
    parse_inclusion_exclusion, whose result is also the world_info every node gets."""
    pool = {h: list(range(n)) for h, n in hosts}

    def parse(spec: str, flag: str) -> dict[str, list[int]]:
        out: dict[str, set[int]] = {}
        for node in filter(None, spec.split("@")):
            host, _, ids = node.partition(":")
            if host not in pool:
                raise InputError(f"{flag} {one_line(spec)!r}: host {one_line(host)!r} is not in the hostfile")
            try:
                picked = {int(i) for i in ids.split(",")} if ids else set()
            except ValueError:
                raise InputError(f"{flag} {one_line(spec)!r}: slots are integers, e.g. {host}:0,1") from None
            if any(i not in pool[host] for i in picked):
                raise InputError(f"{flag} {one_line(spec)!r}: {host} has slots 0..{len(pool[host]) - 1}")
            out.setdefault(host, set()).update(picked)
        return {h: sorted(ids) for h, ids in out.items()}

    if include:
        chosen = {h: (ids or pool[h]) for h, ids in parse(include, "--include").items()}
    elif exclude:
        chosen = dict(pool)
        for h, ids in parse(exclude, "--exclude").items():
            chosen[h] = [i for i in pool[h] if ids and i not in ids]
    else:
        chosen = pool
    return {h: chosen[h] for h in pool if chosen.get(h)}


def world_info(resources: dict[str, list[int]]) -> str:
    """runner.encode_world_info."""
    return base64.urlsafe_b64encode(json.dumps(resources).encode("utf-8")).decode("utf-8")


def runner_environment(environ: dict[str, str], cwd: str) -> dict[str, str]:
    """The runner's env on its multi-node path: a copy of ours with the working directory put first on PYTHONPATH."""
    env = dict(environ)
    env["PYTHONPATH"] = cwd + ":" + env["PYTHONPATH"] if "PYTHONPATH" in env else cwd
    return env


def env_file_paths(environ: Mapping[str, str], cwd: str, home: str) -> list[Path]:
    """DEEPSPEED_ENVIRONMENT_PATHS joined with DS_ENV_FILE (default .deepspeed_env), in the order read."""
    name = environ.get("DS_ENV_FILE", ".deepspeed_env")
    return [p for p in (Path(home, name), Path(cwd, name)) if p.is_file()]


def deepspeed_exports(environ: dict[str, str], cwd: str, home: str) -> list[Export]:
    """Every export the runner will add, in its order (later ones win)."""
    every = "/".join(p + "*" for p in EXPORT_PREFIXES)
    out = [Export(k, v, "the working directory, which DeepSpeed's runner puts first on PYTHONPATH" if k == "PYTHONPATH"
                  else f"your environment (DeepSpeed's runner exports every {every} variable)")
           for k, v in runner_environment(environ, cwd).items() if k.startswith(EXPORT_PREFIXES)]
    for path in env_file_paths(environ, cwd, home):
        try:
            lines = deepspeed_env_lines(path)
        except UnicodeDecodeError:
            raise InputError(f"{path}: not text in this locale's encoding; DeepSpeed's runner cannot read it: fix or "
                             "remove it") from None
        for n, key, value in lines:
            out.append(Export(key.strip(), value.rstrip("\r\n"), f"{path} line {n}", stripped_by_deepspeed=True))
    return out


def export_problem(e: Export, backend: str) -> str | None:
    """Why ``e`` would not arrive byte for byte under ``backend``, or None."""
    value = e.value.strip() if e.stripped_by_deepspeed else e.value
    if value != value.strip():
        return "has leading or trailing whitespace, which DeepSpeed's runner strips"
    if CONTROL.search(value):
        return f"contains the control character {CONTROL.search(value).group()!r}"
    quoted = NEEDS_QUOTES.search(value)
    if backend == "pdsh":
        active = sorted({c for c in value if c in SHELL_ACTIVE_IN_DQUOTES})
        if active:
            return (f"contains {' '.join(map(repr, active))}, which the remote shell interprets inside the double "
                    "quotes DeepSpeed puts around it")
        if PDSH_EXPANDS.search(value):
            return (f"contains {PDSH_EXPANDS.search(value).group()!r}, which pdsh replaces (%h host, %u user, %n rank, "
                    "%% -> %)")
        return None
    if quoted:
        return (f"contains {quoted.group()!r}: DeepSpeed then wraps it in double quotes, which {BACKEND_TOOL[backend]} "
                "passes on as part of the value")
    if backend == "slurm" and "," in value:
        return "contains ',', which srun --export reads as the start of the next variable"
    return None


def check_exports(exports: list[Export], backend: str) -> list[str]:
    problems = []
    for e in exports:
        if not KEY.fullmatch(e.key):
            problems.append(f"{e.source}: {one_line(e.key)!r} is not a variable name, and DeepSpeed's runner pastes it "
                            f"into `export NAME=...` for --launcher {backend}: fix or remove it")
            continue
        why = export_problem(e, backend)
        if why:
            problems.append(f"--launcher {backend}: {e.key}={one_line(e.value)[:80]!r} from {e.source} {why}; "
                            "it would not reach the ranks as written: change or unset it (pass values for the ranks "
                            "with --env, which carries any value)")
    return problems


def check_plain_word(what: str, value: str, backend: str, fix: str) -> list[str]:
    """Values the pdsh runner pastes unquoted (`cd CWD;`, the python path)."""
    if PLAIN_WORD.fullmatch(value):
        return []
    bad = next(c for c in value + " " if not PLAIN_WORD.fullmatch(c))
    return [f"--launcher {backend}: {what} {one_line(value)!r} contains {bad!r}, and DeepSpeed's runner pastes it "
            f"unquoted into the remote shell command; {fix}"]


def pdsh_argument(arg: str) -> str:
    """PDSHRunner.parse_user_args: an argument with a space is put in double quotes."""
    return '"{}"'.format(arg.replace('"', '\\"')) if " " in arg else arg


def deepspeed_quote(value: str) -> str:
    """MultiNodeRunner.add_export."""
    value = value.strip()
    return f'"{value}"' if NEEDS_QUOTES.search(value) else value


def pdsh_argv(resources: dict[str, list[int]], launcher_args: tuple[str, ...] = ()) -> list[str]:
    """PDSHRunner.get_cmd's pdsh options: `pdsh -S -f 1024 -w HOSTS` then --launcher_args split; the
    remote command (pdsh_remote_command) follows as further arguments."""
    return ["pdsh", "-S", "-f", str(PDSH_MAX_FAN_OUT), "-w", ",".join(resources), *launcher_args]


def pdsh_remote_command(exports: list[Export], cwd: str, python: str, resources: dict[str, list[int]], master_addr: str,
                        master_port: int, module: str, args: list[str]) -> str:
    """The string pdsh runs on every node (before its %n expansion): PDSHRunner.get_cmd's
    arguments after `pdsh -S -f N -w HOSTS`, joined with spaces as pdsh joins them."""
    merged: dict[str, str] = {}
    for e in exports:
        merged[e.key] = deepspeed_quote(e.value)
    parts = ["".join(f"export {k}={v}; " for k, v in merged.items()), f"cd {cwd};", python, "-u", "-m",
             "deepspeed.launcher.launch", f"--world_info={world_info(resources)}", "--node_rank=%n",
             f"--master_addr={master_addr}", f"--master_port={master_port}", "--module",
             "--enable_each_rank_log=None",  # the runner's default is the string "None", which is truthy
             module]
    return " ".join(parts + [pdsh_argument(a) for a in args])


def remote_problems(backend: str, exports: list[Export], cwd: str, python: str) -> list[str]:
    """Everything DeepSpeed adds on its own that would not arrive byte for byte under ``backend``."""
    problems = []
    if backend == "pdsh":
        problems += check_plain_word("the working directory", cwd, backend,
                                     "launch from a directory whose path is plain")
        problems += check_plain_word("the python interpreter", python, backend, "use a python whose path is plain")
    return problems + check_exports(exports, backend)


def home_dir(environ: dict[str, str]) -> str:
    """os.path.expanduser('~') as the runner will evaluate it (HOME from its environment)."""
    return environ.get("HOME") or os.path.expanduser("~")


def check_remote(req, spec, environ: dict[str, str], cwd: str) -> str | None:
    """For a LaunchRequest and its LaunchSpec on DeepSpeed's multi-node path: InputError (one line, and how
    many more) when anything DeepSpeed adds by itself would not arrive byte for byte; for pdsh, the exact
    string each node's shell runs. None on the local paths, where no shell or MPI launcher is involved."""
    if spec.local:
        return None
    exports = deepspeed_exports(environ, cwd, home_dir(environ))
    problems = remote_problems(req.launcher, exports, cwd, req.python)
    if problems:
        more = f" (and {len(problems) - 1} more like it)" if len(problems) > 1 else ""
        raise InputError(problems[0] + more)
    if req.launcher != "pdsh":
        return None
    i = spec.argv.index("--module")  # the runner's script and its arguments, exactly as build() passed them
    return pdsh_remote_command(exports, cwd, req.python, spec.resources, spec.master_addr, req.master_port,
                               spec.argv[i + 1], list(spec.argv[i + 2:]))
