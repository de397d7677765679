"""Limits (memlock, files, /dev/shm, CPUs, RAM), launcher backends, environment variables, with advice."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping

from ..errors import QwenDsError, one_line
from ..units import GIB, MIB
from .probes import dist_version

def _rlimit(which: int) -> tuple[int | None, int | None]:
    import resource

    soft, hard = resource.getrlimit(which)
    inf = resource.RLIM_INFINITY
    return (None if soft == inf else soft), (None if hard == inf else hard)


def _meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    out = {}
    try:
        for ln in Path(path).read_text().splitlines():
            m = re.match(r"(\w+):\s+(\d+)\s*kB", ln)
            if m:
                out[m.group(1)] = int(m.group(2)) * 1024
    except OSError:
        pass
    return out


def _cgroup_memory_limit() -> int | None:
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            v = Path(p).read_text().strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < 1 << 60:
            return int(v)
    return None


def limits(shm_path: str = "/dev/shm") -> dict:
    """memlock / open files (None = unlimited), /dev/shm size, CPUs, NUMA nodes, RAM, container memory limit."""
    out: dict = {}
    try:
        import resource

        s, h = _rlimit(resource.RLIMIT_MEMLOCK)
        out["memlock"] = {"soft_bytes": s, "hard_bytes": h}
        s, h = _rlimit(resource.RLIMIT_NOFILE)
        out["nofile"] = {"soft": s, "hard": h}
    except Exception as exc:  # no resource module (non-POSIX)
        out["memlock"] = {"error": one_line(exc)}
        out["nofile"] = {"error": one_line(exc)}
    try:
        st = os.statvfs(shm_path)
        out["shm"] = {"path": shm_path, "total_bytes": st.f_blocks * st.f_frsize,
                      "free_bytes": st.f_bavail * st.f_frsize}
    except OSError as exc:
        out["shm"] = {"path": shm_path, "error": f"{shm_path}: {one_line(exc.strerror or exc)}"}
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    out["cpus"] = {"logical": os.cpu_count(), "usable": usable}
    try:
        nodes = [p for p in Path("/sys/devices/system/node").glob("node[0-9]*")]
        out["numa_nodes"] = len(nodes) or None
    except OSError:
        out["numa_nodes"] = None
    mi = _meminfo()
    out["ram"] = {"total_bytes": mi.get("MemTotal"), "available_bytes": mi.get("MemAvailable"),
                  "cgroup_limit_bytes": _cgroup_memory_limit()}
    return out


def _bytes(n: int | None) -> str:
    if n is None:
        return "unlimited"
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= MIB:
        return f"{n / MIB:.0f} MiB"
    return f"{n / 1024:.0f} KiB"


SHM_MIN = 1 * GIB
NOFILE_MIN = 4096


def limits_advice(lim: dict) -> list[dict]:
    adv: list[dict] = []

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "limits", "message": msg})

    ml = lim.get("memlock", {})
    if "error" not in ml and ml.get("soft_bytes") is not None:
        add("warn", f"memlock (ulimit -l) is {_bytes(ml['soft_bytes'])}: pinned-memory offload (DeepSpeed offload "
                    "pin_memory defaults to true since 0.19.5; DS_PIN_MEMORY_BACKEND=native uses mlock) and "
                    "InfiniBand/RDMA memory registration can fail under it. Use `ulimit -l unlimited` (docker: "
                    "--ulimit memlock=-1; hosts: /etc/security/limits.conf), or set pin_memory: false in "
                    "offload_optimizer/offload_param.")
    nf = lim.get("nofile", {})
    if "error" not in nf and nf.get("soft") is not None and nf["soft"] < NOFILE_MIN:
        target = "65536" if nf.get("hard") is None or nf["hard"] >= 65536 else str(nf["hard"])
        add("warn", f"open files (ulimit -n) is {nf['soft']}: DataLoader workers passing tensors through file "
                    f"descriptors and many ranks per node hit 'Too many open files'; raise it (ulimit -n {target}).")
    shm = lim.get("shm", {})
    if "error" in shm:
        add("warn", f"{shm['error']}: NCCL's shared-memory transport and DataLoader workers need /dev/shm.")
    elif shm.get("total_bytes") is not None and shm["total_bytes"] < SHM_MIN:
        add("warn", f"/dev/shm is {_bytes(shm['total_bytes'])} (a container default is 64 MB): NCCL fails with "
                    "'failed to extend /dev/shm' and DataLoader workers crash. Run the container with --ipc=host or "
                    "--shm-size=16g (Kubernetes: an emptyDir with medium: Memory on /dev/shm) rather than "
                    "NCCL_SHM_DISABLE=1, which only moves traffic to slower paths.")
    ram = lim.get("ram", {})
    cg, total = ram.get("cgroup_limit_bytes"), ram.get("total_bytes")
    if cg and total and cg < total:
        add("info", f"container memory limit {_bytes(cg)} < host RAM {_bytes(total)}: CPU offload and dataloaders are "
                    f"bounded by {_bytes(cg)}.")
    return adv


# --------------------------------------------------------------------------- launcher backends

BACKENDS = {
    "pdsh": "deepspeed --launcher pdsh (the default for several hosts)",
    "mpirun": "deepspeed --launcher openmpi / mvapich / mpich / impi",
    "srun": "deepspeed --launcher slurm",
    "ssh": "pdsh transport and DeepSpeed's host check",
    "numactl": "deepspeed --bind_cores_to_rank / --bind_core_list",
}


def backends(which: Callable[[str], str | None] = shutil.which) -> dict:
    out = {name: {"path": which(name), "used_by": used} for name, used in BACKENDS.items()}
    out["mpi4py"] = {"path": None, "version": dist_version("mpi4py"),
                     "used_by": "rank discovery for the openmpi / mvapich / slurm backends"}
    return out


def backends_advice(b: dict) -> list[dict]:
    adv: list[dict] = []

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "backends", "message": msg})

    have = {k for k, v in b.items() if v.get("path") or v.get("version")}
    if not have & {"pdsh", "mpirun", "srun"}:
        add("info", "No multi-node launcher backend (pdsh, mpirun, srun): one host works as is; for several, install "
                    "pdsh (+ passwordless ssh) or start `qwen-ds launch --launcher no-ssh --node-rank N` on every "
                    "node.")
    if "pdsh" in have and "ssh" not in have:
        add("warn", "pdsh is installed but ssh is not: DeepSpeed's pdsh backend runs PDSH_RCMD_TYPE=ssh.")
    if have & {"mpirun", "srun"} and "mpi4py" not in have:
        found = " / ".join(sorted(have & {"mpirun", "srun"}))
        add("info", f"{found} found but mpi4py is not installed: DeepSpeed's openmpi / mvapich / slurm backends start "
                    "the script directly and deepspeed.init_distributed() needs mpi4py to find ranks (pip install "
                    "mpi4py).")
    return adv


# --------------------------------------------------------------------------- environment

ENV_PREFIXES = ("NCCL_", "TORCH_NCCL_")
ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "DS_ACCELERATOR", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF",
             "DS_ENV_FILE", "DS_PIN_MEMORY_BACKEND", "DEEPSPEED_TIMEOUT", "FLA_TILELANG")
# PyTorch reads these old names as fallbacks for TORCH_NCCL_* (ProcessGroupNCCL.hpp)
DEPRECATED_NCCL = {"NCCL_BLOCKING_WAIT": "TORCH_NCCL_BLOCKING_WAIT",
                   "NCCL_ASYNC_ERROR_HANDLING": "TORCH_NCCL_ASYNC_ERROR_HANDLING",
                   "NCCL_DESYNC_DEBUG": "TORCH_NCCL_DESYNC_DEBUG",
                   "NCCL_ENABLE_TIMING": "TORCH_NCCL_ENABLE_TIMING"}
_TRUE = ("1", "true", "yes", "on")


def watched(env: Mapping[str, str]) -> dict[str, str]:
    return {k: env[k] for k in sorted(env) if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}


def _read_kv_file(path: Path) -> tuple[dict[str, str], str | None]:
    """KEY=VALUE lines (NCCL's conf files allow # comments). Returns (vars, problem)."""
    out: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return out, one_line(exc.strerror or exc)
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith("#") or "=" not in s:
            continue
        k, v = s.split("=", 1)
        out[k.strip()] = v.strip()
    return out, None


def deepspeed_env_files(env: Mapping[str, str], home: Path, cwd: Path) -> list[dict]:
    """DeepSpeed's runner reads DS_ENV_FILE (default .deepspeed_env) from ~ then the working directory."""
    from ..launch.envfile import read_env_file
    from ..launch.remote import env_file_paths

    paths: list[Path] = []
    for p in env_file_paths(env, str(cwd), str(home)):  # the files and order launch checks; each one once here
        if p.resolve() not in [q.resolve() for q in paths]:
            paths.append(p)
    out = []
    for p in paths:
        try:
            out.append({"path": str(p), "vars": read_env_file(p), "error": None})
        except QwenDsError as exc:  # blank line / no '=': DeepSpeed's reader crashes on these
            out.append({"path": str(p), "vars": _read_kv_file(p)[0], "error": one_line(exc)})
        except OSError as exc:
            out.append({"path": str(p), "vars": {}, "error": one_line(exc.strerror or exc)})
    return out


def nccl_conf_files(env: Mapping[str, str], home: Path) -> list[dict]:
    """NCCL also reads variables from NCCL_CONF_FILE or ~/.nccl.conf, and /etc/nccl.conf."""
    cands = [Path(env["NCCL_CONF_FILE"])] if env.get("NCCL_CONF_FILE") else [home / ".nccl.conf"]
    cands.append(Path("/etc/nccl.conf"))
    out = []
    for p in cands:
        if p.is_file():
            vars_, err = _read_kv_file(p)
            out.append({"path": str(p), "vars": vars_, "error": err})
    return out


def environment(env: Mapping[str, str] | None = None, home: Path | None = None, cwd: Path | None = None) -> dict:
    env = os.environ if env is None else env
    home = Path(os.path.expanduser("~")) if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    return {"set": watched(env), "deepspeed_env_files": deepspeed_env_files(env, home, cwd),
            "nccl_conf_files": nccl_conf_files(env, home)}


def env_advice(variables: Mapping[str, str], source: str = "environment") -> list[dict]:
    """Warnings for the seed article's advice and other settings that cost bandwidth or hide errors."""
    adv: list[dict] = []
    where = "" if source == "environment" else f" (in {source})"

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "environment", "message": msg})

    v = {k: str(val).strip() for k, val in variables.items()}
    if v.get("NCCL_SHM_DISABLE", "").lower() in _TRUE:
        add("warn", f"NCCL_SHM_DISABLE={v['NCCL_SHM_DISABLE']}{where}: turns off NCCL's shared-memory transport, so "
                    "intra-node traffic that cannot use P2P falls back to slower paths. It is a workaround for a small "
                    "/dev/shm (fix that with --shm-size / --ipc=host), not a timeout fix: unset it.")
    if "NCCL_BLOCKING_WAIT" in v:
        add("warn",
            f"NCCL_BLOCKING_WAIT={v['NCCL_BLOCKING_WAIT']}{where}: deprecated name of TORCH_NCCL_BLOCKING_WAIT, "
                    "which makes wait() block and raise on timeout; it does not lengthen the timeout. Set the timeout "
                    "with init_process_group(timeout=...) / deepspeed.init_distributed(timeout=...) / "
                    "DEEPSPEED_TIMEOUT (minutes), and debug hangs with NCCL_DEBUG=INFO, TORCH_NCCL_DUMP_ON_TIMEOUT, "
                    "TORCH_NCCL_DESYNC_DEBUG.")
    if v.get("TORCH_NCCL_BLOCKING_WAIT", "").lower() in _TRUE:
        add("info", f"TORCH_NCCL_BLOCKING_WAIT={v['TORCH_NCCL_BLOCKING_WAIT']}{where}: waits raise on timeout instead "
                    "of hanging; the timeout itself is init_process_group(timeout=...) (DeepSpeed: DEEPSPEED_TIMEOUT "
                    "minutes).")
    for old, new in DEPRECATED_NCCL.items():
        if old != "NCCL_BLOCKING_WAIT" and old in v:
            add("info", f"{old}{where}: deprecated name; PyTorch reads {new} first.")
    if v.get("NCCL_P2P_DISABLE", "").lower() in _TRUE:
        add("warn", f"NCCL_P2P_DISABLE={v['NCCL_P2P_DISABLE']}{where}: disables NVLink/PCIe peer-to-peer; intra-node "
                    "collectives go through host memory at a fraction of the bandwidth.")
    if v.get("NCCL_IB_DISABLE", "").lower() in _TRUE:
        add("warn", f"NCCL_IB_DISABLE={v['NCCL_IB_DISABLE']}{where}: inter-node traffic uses TCP sockets instead of "
                    "InfiniBand/RoCE.")
    if ("PYTORCH_ALLOC_CONF" in v and "PYTORCH_CUDA_ALLOC_CONF" in v
            and v["PYTORCH_ALLOC_CONF"] != v["PYTORCH_CUDA_ALLOC_CONF"]):
        add("info", f"PYTORCH_ALLOC_CONF and PYTORCH_CUDA_ALLOC_CONF differ{where}: PyTorch uses PYTORCH_ALLOC_CONF.")
    return adv


def env_context_advice(env_set: Mapping[str, str], gpu_count: int, ds_files: list[dict]) -> list[dict]:
    """Advice that depends on the environment and on what the machine has."""
    adv: list[dict] = []

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "environment", "message": msg})

    acc = env_set.get("DS_ACCELERATOR")
    nccl = [k for k in env_set if k.startswith("NCCL_")]
    if gpu_count == 0 and nccl and acc != "cuda":
        add("warn", f"{', '.join(nccl[:4])}{'...' if len(nccl) > 4 else ''} set on a host without GPUs: DeepSpeed's "
                    "runner then detects the CPU accelerator and does NOT forward NCCL_* to the nodes. Set "
                    "DS_ACCELERATOR=cuda on this launching host or put them in .deepspeed_env.")
    if acc and acc != "cuda" and gpu_count > 0:
        add("warn", f"DS_ACCELERATOR={acc} while {gpu_count} NVIDIA GPU(s) are present: DeepSpeed will not use them.")
    if "CUDA_VISIBLE_DEVICES" in env_set:
        add("info", f"CUDA_VISIBLE_DEVICES={env_set['CUDA_VISIBLE_DEVICES']}: the deepspeed launcher turns it into "
                    "--include localhost:<ids> on one host, and ignores it when "
                    "--include/--exclude/--num_gpus/--num_nodes are given.")
    for f in ds_files:
        if f["error"]:
            add("warn", f"{f['path']}: {f['error']}")
    return adv


# --------------------------------------------------------------------------- version advice

