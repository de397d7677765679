"""`qwen-ds doctor`: what this machine can run, in one look.

Versions (python, torch + CUDA + NCCL, deepspeed, transformers, driver, triton, FLA, causal-conv1d),
GPUs (nvidia-smi, mapped to our catalog), the interconnect (`nvidia-smi topo -m` parsed into NVLink
domains), limits (memlock, open files, /dev/shm, CPUs, RAM), launcher backends and the environment
variables that matter, with advice.

Every probe is optional: a missing tool or package becomes a line saying what could not be seen,
never an exception. Heavy packages are looked up by distribution metadata; `import torch` happens
only in ``torch_probe()`` and only when torch is installed. The parsers and advice functions are pure
(text or dicts in, dicts out) so they are tested on captured outputs (tests/fixtures/topo_*.txt).
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .errors import QwenDsError, one_line

TIMEOUT_S = 15
GIB = 1024**3
MIB = 1024**2

SECTIONS = ("versions", "gpus", "topology", "limits", "backends", "environment", "advice")


# --------------------------------------------------------------------------- running commands


@dataclass(frozen=True)
class CmdResult:
    ok: bool
    out: str
    error: str | None = None  # one line: "nvidia-smi: not found", "nvidia-smi: timed out after 15 s", ...


Runner = Callable[[list[str]], CmdResult]


def run_cmd(argv: list[str], timeout: float = TIMEOUT_S) -> CmdResult:
    """Run a command with a timeout; every failure is a one-line ``error`` naming the command."""
    exe = shutil.which(argv[0])
    if exe is None:
        return CmdResult(False, "", f"{argv[0]}: not found")
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return CmdResult(False, "", f"{argv[0]}: timed out after {timeout:g} s")
    except OSError as exc:
        return CmdResult(False, "", f"{argv[0]}: {one_line(exc.strerror or exc)}")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        msg = one_line(lines[0]) if lines else ""
        return CmdResult(False, proc.stdout, f"{' '.join(argv[:2])}: exit {proc.returncode}" + (f": {msg[:200]}" if msg else ""))
    return CmdResult(True, proc.stdout)


# --------------------------------------------------------------------------- versions


def dist_version(*names: str) -> str | None:
    """Installed version of the first distribution found among ``names`` (no import)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        except Exception:  # a broken dist-info must not stop the doctor
            continue
    return None


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def vtuple(version: str | None) -> tuple[int, int, int] | None:
    """'3.4.0+git1234' -> (3, 4, 0); None when there is no leading number."""
    if not version:
        return None
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", version)
    if not m:
        return None
    return tuple(int(x or 0) for x in m.groups())  # type: ignore[return-value]


def torch_probe(devices: bool = False) -> dict:
    """CUDA/NCCL details from torch: imported here only, and only when torch is installed.

    ``devices``: also list the CUDA devices torch sees (used when nvidia-smi gave nothing)."""
    info: dict = {"installed": dist_version("torch"), "imported": False, "error": None, "cuda": None, "hip": None,
                  "cuda_available": False, "device_count": 0, "nccl": None, "devices": []}
    if info["installed"] is None:
        return info
    try:
        import torch  # noqa: PLC0415 - deliberately lazy
    except Exception as exc:  # ImportError, OSError from a broken CUDA install, ...
        info["error"] = f"import torch failed: {one_line(exc)[:200]}"
        return info
    info["imported"] = True
    info["cuda"] = getattr(torch.version, "cuda", None)
    info["hip"] = getattr(torch.version, "hip", None)
    try:
        info["cuda_available"] = bool(torch.cuda.is_available())
        info["device_count"] = int(torch.cuda.device_count()) if info["cuda_available"] else 0
    except Exception as exc:
        info["error"] = f"torch.cuda: {one_line(exc)[:200]}"
    if info["cuda"]:
        try:
            v = torch.cuda.nccl.version()
            if isinstance(v, tuple):
                info["nccl"] = ".".join(str(x) for x in v[:3])
            elif isinstance(v, int):  # old torch: 2708 or 21903
                info["nccl"] = f"{v // 1000}.{v % 1000 // 100}.{v % 100}" if v < 10000 else f"{v // 10000}.{v % 10000 // 100}.{v % 100}"
        except Exception:
            info["nccl"] = None
    if devices and info["cuda_available"]:
        try:
            for i in range(info["device_count"]):
                p = torch.cuda.get_device_properties(i)
                info["devices"].append({"index": i, "name": p.name, "memory_mib": p.total_memory // MIB,
                                        "compute_capability": f"{p.major}.{p.minor}"})
        except Exception as exc:
            info["error"] = f"torch.cuda device query: {one_line(exc)[:200]}"
    return info


def versions(torch_info: dict, driver: str | None, driver_error: str | None) -> dict:
    """name -> {version (None when absent), detail}."""
    out: dict[str, dict] = {}

    def put(name: str, version: str | None, detail: str = "") -> None:
        out[name] = {"version": version, "detail": detail if version or detail else "not installed"}

    put("python", platform.python_version(), sys.executable)
    t = torch_info
    if t["installed"] is None:
        put("torch", None)
    else:
        put("torch", t["installed"], t["error"] or ("CUDA available" if t["cuda_available"] else
                                                  "ROCm build" if t["hip"] else
                                                  "CPU build" if t["imported"] and not t["cuda"] else
                                                  "CUDA build, no usable GPU" if t["imported"] else ""))
    put("torch CUDA", t["cuda"] or t["hip"], "" if t["cuda"] or t["hip"] else
        ("CPU-only torch" if t["imported"] else "torch not importable" if t["installed"] else "no torch"))
    put("NCCL (torch)", t["nccl"], "" if t["nccl"] else ("needs a CUDA build of torch" if t["imported"] and not t["cuda"] else
                                                      "not reported" if t["imported"] else "no torch"))
    put("deepspeed", dist_version("deepspeed"))
    put("transformers", dist_version("transformers"))
    put("NVIDIA driver", driver, "" if driver else (driver_error or "not seen"))
    triton = dist_version("triton", "pytorch-triton", "triton-rocm", "pytorch-triton-rocm")
    put("triton", triton)
    fla = dist_version("flash-linear-attention", "fla-core")
    put("flash-linear-attention", fla or ("present" if module_present("fla") else None),
        "Qwen3-Next GDN kernels (module fla)" if fla or module_present("fla") else "")
    cc1d = dist_version("causal-conv1d")
    put("causal-conv1d", cc1d or ("present" if module_present("causal_conv1d") else None),
        "Qwen3-Next short-conv kernels" if cc1d or module_present("causal_conv1d") else "")
    tl = dist_version("tilelang")
    if tl:
        put("tilelang", tl, "FLA's Hopper fallback backend")
    return out


# --------------------------------------------------------------------------- GPUs

GPU_QUERY = "index,name,memory.total,compute_cap,driver_version"
GPU_QUERY_OLD = "index,name,memory.total,driver_version"  # drivers before compute_cap existed


def _num(text: str) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def parse_gpu_query(text: str, fields: str = GPU_QUERY) -> list[dict]:
    """`nvidia-smi --query-gpu=<fields> --format=csv,noheader` -> one dict per GPU."""
    names = fields.split(",")
    out = []
    for row in csv.reader(text.splitlines(), skipinitialspace=True):
        if not row or not row[0].strip():
            continue
        d = dict(zip(names, (c.strip() for c in row)))
        cc = d.get("compute_cap")
        out.append({
            "index": _num(d.get("index", "")),
            "name": d.get("name", ""),
            "memory_mib": _num(d.get("memory.total", "")),
            "compute_capability": cc if cc and re.fullmatch(r"\d+\.\d+", cc) else None,
            "driver": d.get("driver_version") or None,
        })
    return out


def _family(entry: dict) -> str:
    # 'H100-SXM' -> 'h100', 'RTX-4090' -> '4090', 'A100-80GB' -> 'a100'
    parts = entry["name"].lower().split("-")
    return parts[1] if parts[0] == "rtx" else parts[0]


def match_catalog(name: str, memory_mib: int | None) -> tuple[str | None, str | None]:
    """(catalog name, 'exact' | 'closest') for an nvidia-smi GPU name, or (None, None).

    exact: the name (or without 'NVIDIA '/'Tesla ') is a catalog alias (get_gpu);
    closest: same family word (e.g. 'A100') and memory within 10 % (e.g. 'NVIDIA A100 80GB PCIe')."""
    from .hardware import get_gpu, gpu_entries

    candidates = [name, re.sub(r"^(nvidia|tesla)\s+", "", name.strip(), flags=re.I)]
    for cand in candidates:
        try:
            return get_gpu(cand).name, "exact"
        except QwenDsError:
            continue
    lname = name.lower()
    fits = []
    for e in gpu_entries():
        if not re.search(rf"(?<![a-z0-9]){re.escape(_family(e))}(?![a-z0-9])", lname):
            continue
        if memory_mib and abs(memory_mib * MIB - e["memory_bytes"]) > 0.10 * e["memory_bytes"]:
            continue
        tokens = e["name"].lower().split("-")[1:]
        fits.append((sum(t in lname for t in tokens), e["name"]))
    if fits:
        fits.sort(key=lambda x: -x[0])
        return fits[0][1], "closest"
    return None, None


def precision_support(cc: str | None) -> tuple[bool | None, bool | None]:
    """(bf16, fp8) from compute capability: bf16 needs >= 8.0, fp8 tensor cores >= 8.9."""
    if not cc:
        return None, None
    major, minor = (int(x) for x in cc.split("."))
    return (major, minor) >= (8, 0), (major, minor) >= (8, 9)


def describe_gpus(rows: list[dict]) -> list[dict]:
    from .hardware import get_gpu

    out = []
    for r in rows:
        cat, how = match_catalog(r["name"], r["memory_mib"])
        cc = r["compute_capability"] or (get_gpu(cat).compute_capability if cat else None)
        bf16, fp8 = precision_support(cc)
        out.append({**{k: v for k, v in r.items() if k != "driver"},
                    "memory_gib": round(r["memory_mib"] / 1024, 1) if r["memory_mib"] else None,
                    "compute_capability": cc, "catalog": cat, "catalog_match": how, "bf16": bf16, "fp8": fp8})
    return out


# --------------------------------------------------------------------------- topology

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_COLUMN = re.compile(r"^[A-Za-z][\w.:-]*\d$")          # GPU0, NIC3, mlx5_0
_LINK = re.compile(r"^(X|SYS|SOC|NODE|PHB|PXB|PIX|NV\d+|N/A)$")
_EXTRAS = re.compile(r"CPU Affinity|NUMA Affinity|GPU NUMA ID")
LINK_CLASSES = ("nvlink", "pcie", "node", "sys")    # best to worst
_LINK_WORDS = {
    "nvlink": "NVLink",
    "pcie": "PCIe (PIX/PXB/PHB)",
    "node": "PCIe across host bridges (NODE)",
    "sys": "the CPU interconnect (SYS)",
}


def classify_link(value: str) -> tuple[str, int]:
    """('nvlink', n) for NV<n>; ('pcie', 0) for PIX/PXB/PHB; ('node', 0); ('sys', 0) for SYS/SOC;
    ('self', 0) for X; ('unknown', 0) otherwise."""
    v = value.strip().upper()
    if v == "X":
        return "self", 0
    m = re.fullmatch(r"NV(\d+)", v)
    if m:
        return "nvlink", int(m.group(1))
    if v in ("PIX", "PXB", "PHB"):
        return "pcie", 0
    if v == "NODE":
        return "node", 0
    if v in ("SYS", "SOC"):  # SOC: the name in old drivers
        return "sys", 0
    return "unknown", 0


def parse_topology(text: str) -> dict:
    """Parse `nvidia-smi topo -m` into {columns, links: {row: {col: value}}, gpus, affinity, nics}.

    Robust to the header's ANSI underline, tabs or spaces, missing affinity columns, NIC rows and the
    legend. Raises ValueError when no matrix with GPU0 is found."""
    lines = [_ANSI.sub("", ln).rstrip() for ln in text.splitlines()]
    hdr_i = next((i for i, ln in enumerate(lines) if "GPU0" in ln.split()), None)
    if hdr_i is None:
        raise ValueError("no GPU matrix (no 'GPU0' header) in `nvidia-smi topo -m` output")
    tokens = lines[hdr_i].split()
    columns: list[str] = []
    for tok in tokens:
        if not _COLUMN.match(tok):
            break
        columns.append(tok)
    extras = _EXTRAS.findall(lines[hdr_i])
    links: dict[str, dict[str, str]] = {}
    affinity: dict[str, dict[str, str]] = {}
    for ln in lines[hdr_i + 1:]:
        toks = ln.split()
        if not toks or toks[0].rstrip(":") in ("Legend", "NIC"):
            break
        label = toks[0]
        if label not in columns:
            continue
        vals = toks[1:1 + len(columns)]
        # a row whose cells are not link words is not part of the matrix
        if not vals or not all(_LINK.match(v) for v in vals):
            continue
        links[label] = dict(zip(columns, vals))
        rest = toks[1 + len(columns):]
        if label.startswith("GPU") and rest:
            aff = {}
            for key, val in zip(extras, rest):
                aff[{"CPU Affinity": "cpu", "NUMA Affinity": "numa", "GPU NUMA ID": "gpu_numa_id"}[key]] = val
            affinity[label] = aff
    nics = {}
    for ln in lines:
        m = re.match(r"^\s*(NIC\d+):\s*(\S+)\s*$", ln)
        if m:
            nics[m.group(1)] = m.group(2)
    gpus = sorted(int(c[3:]) for c in columns if re.fullmatch(r"GPU\d+", c) and c in links)
    if not gpus:
        raise ValueError("`nvidia-smi topo -m`: header found but no GPU rows")
    return {"columns": columns, "links": links, "gpus": gpus, "affinity": affinity, "nics": nics}


def ranges(ids: Iterable[int]) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6'."""
    ids = sorted(set(ids))
    out: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


def _components(nodes: list[int], edge: Callable[[int, int], bool]) -> list[list[int]]:
    seen: set[int] = set()
    comps = []
    for n in nodes:
        if n in seen:
            continue
        stack, comp = [n], []
        seen.add(n)
        while stack:
            a = stack.pop()
            comp.append(a)
            for b in nodes:
                if b not in seen and edge(a, b):
                    seen.add(b)
                    stack.append(b)
        comps.append(sorted(comp))
    return comps


def analyse_topology(topo: dict) -> dict:
    """GPU x GPU matrix, link classes per pair, NVLink domains, the largest TP degree whose aligned
    GPU blocks are NVLink all-to-all, and advice."""
    gpus = topo["gpus"]
    links = topo["links"]

    def link(a: int, b: int) -> str:
        return links.get(f"GPU{a}", {}).get(f"GPU{b}", "N/A")

    def cls(a: int, b: int) -> str:
        return classify_link(link(a, b))[0]

    matrix = [[link(a, b).strip() if a != b else "X" for b in gpus] for a in gpus]
    pairs = {c: 0 for c in LINK_CLASSES}
    pairs["unknown"] = 0
    for i, a in enumerate(gpus):
        for b in gpus[i + 1:]:
            pairs[cls(a, b) if cls(a, b) in pairs else "unknown"] += 1

    domains = []
    for comp in _components(gpus, lambda a, b: cls(a, b) == "nvlink"):
        inner = [(a, b) for i, a in enumerate(comp) for b in comp[i + 1:]]
        nv = [classify_link(link(a, b))[1] for a, b in inner if cls(a, b) == "nvlink"]
        domains.append({"gpus": comp, "size": len(comp), "full_mesh": len(nv) == len(inner),
                        "min_nvlinks": min(nv) if nv else 0, "max_nvlinks": max(nv) if nv else 0})

    def all_to_all(block: list[int]) -> bool:
        return all(cls(a, b) == "nvlink" for i, a in enumerate(block) for b in block[i + 1:])

    n = len(gpus)
    tp_nvlink = 1
    for size in range(n, 1, -1):
        if n % size == 0 and all(all_to_all(gpus[k:k + size]) for k in range(0, n, size)):
            tp_nvlink = size
            break

    # groups joined by anything better than SYS (one CPU socket / NUMA node)
    sockets = _components(gpus, lambda a, b: cls(a, b) in ("nvlink", "pcie", "node"))
    numa = {g: topo["affinity"].get(f"GPU{g}", {}).get("numa") for g in gpus}
    out = {"gpus": gpus, "matrix": matrix, "pairs": pairs, "nvlink_domains": domains,
           "max_tp_on_nvlink": tp_nvlink, "socket_groups": sockets,
           "numa": {str(g): v for g, v in numa.items() if v not in (None, "N/A")},
           "nics": topo.get("nics", {})}
    out["advice"] = topology_advice(out, cls)
    return out


def _best_between(group_a: list[int], group_b: list[int], cls: Callable[[int, int], str]) -> str:
    found = {cls(a, b) for a in group_a for b in group_b}
    for c in LINK_CLASSES:
        if c in found:
            return c
    return "unknown"


def topology_advice(a: dict, cls: Callable[[int, int], str]) -> list[dict]:
    gpus, domains, n = a["gpus"], a["nvlink_domains"], len(a["gpus"])
    adv: list[dict] = []

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "topology", "message": msg})

    if n < 2:
        return adv
    nv_domains = [d for d in domains if d["size"] > 1]
    tp = a["max_tp_on_nvlink"]
    if len(domains) == 1 and domains[0]["full_mesh"]:
        d = domains[0]
        add("ok", f"{'Both' if n == 2 else f'All {n}'} GPUs are NVLink all-to-all (NV{d['min_nvlinks']}): TP/EP up to {n} stays on NVLink; "
                  f"across nodes keep TP <= {n} and use ZeRO-3 hpZ = {n} (gen-config --hpz {n}).")
    elif len(domains) == 1:
        missing = [(x, y) for i, x in enumerate(gpus) for y in gpus[i + 1:] if cls(x, y) != "nvlink"]
        ex = ", ".join(f"{x}-{y}" for x, y in missing[:3])
        add("warn", f"NVLink reaches all {n} GPUs but not all-to-all ({len(missing)} pairs without a direct link, e.g. "
                    f"{ex}; a hybrid cube-mesh): NCCL rings still ride NVLink for ZeRO/DP, but keep TP <= {tp} "
                    f"(GPU blocks {', '.join(ranges(gpus[k:k + tp]) for k in range(0, n, tp))} are all-to-all).")
    elif nv_domains:
        names = [ranges(d["gpus"]) for d in domains]
        between = {_best_between(domains[i]["gpus"], domains[j]["gpus"], cls)
                   for i in range(len(domains)) for j in range(i + 1, len(domains))}
        best = min(between, key=lambda c: LINK_CLASSES.index(c) if c in LINK_CLASSES else 99)
        sizes = {d["size"] for d in domains}
        size = min(sizes)
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        add("warn", f"GPUs {listed} are only connected through {_LINK_WORDS.get(best, best)}: "
                    f"keep TP (and EP) inside an NVLink domain (TP <= {tp})"
                    + (f", prefer ZeRO with hpZ = {size} (gen-config --hpz {size}) so weight all-gathers stay inside a domain."
                       if len(sizes) == 1 and n % size == 0 else "."))
    else:
        worst = max((cls(x, y) for i, x in enumerate(gpus) for y in gpus[i + 1:]),
                    key=lambda c: LINK_CLASSES.index(c) if c in LINK_CLASSES else -1)
        add("warn", f"No NVLink between GPUs: all GPU-to-GPU traffic is PCIe (worst path: {_LINK_WORDS.get(worst, worst)}). "
                    "TP > 1 puts two all-reduces per layer on PCIe: prefer TP = 1 with ZeRO (overlap_comm) or PP.")
    socket_groups = a["socket_groups"]
    if len(socket_groups) > 1 and not (len(domains) == 1):
        add("info", f"GPU groups {' / '.join(ranges(g) for g in socket_groups)} sit on different CPU sockets (SYS): "
                    "peer-to-peer between them usually goes through host memory, so NCCL uses its shared-memory "
                    "transport; keep /dev/shm large and leave NCCL_P2P_DISABLE / NCCL_SHM_DISABLE unset.")
    return adv


# --------------------------------------------------------------------------- limits


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
        out["shm"] = {"path": shm_path, "total_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}
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
                    "pin_memory defaults to true since 0.19.5; DS_PIN_MEMORY_BACKEND=native uses mlock) and InfiniBand/RDMA "
                    "memory registration can fail under it. Use `ulimit -l unlimited` (docker: --ulimit memlock=-1; "
                    "hosts: /etc/security/limits.conf), or set pin_memory: false in offload_optimizer/offload_param.")
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
                    "pdsh (+ passwordless ssh) or start `qwen-ds launch --launcher no-ssh --node-rank N` on every node.")
    if "pdsh" in have and "ssh" not in have:
        add("warn", "pdsh is installed but ssh is not: DeepSpeed's pdsh backend runs PDSH_RCMD_TYPE=ssh.")
    if have & {"mpirun", "srun"} and "mpi4py" not in have:
        found = " / ".join(sorted(have & {"mpirun", "srun"}))
        add("info", f"{found} found but mpi4py is not installed: DeepSpeed's openmpi / mvapich / slurm backends start "
                    "the script directly and deepspeed.init_distributed() needs mpi4py to find ranks (pip install mpi4py).")
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
    from .launch.envfile import read_env_file

    name = env.get("DS_ENV_FILE", ".deepspeed_env")
    paths: list[Path] = []
    for base in (home, cwd):
        p = Path(name) if os.path.isabs(name) else base / name
        if p.is_file() and p.resolve() not in [q.resolve() for q in paths]:
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
        add("warn", f"NCCL_BLOCKING_WAIT={v['NCCL_BLOCKING_WAIT']}{where}: deprecated name of TORCH_NCCL_BLOCKING_WAIT, "
                    "which makes wait() block and raise on timeout; it does not lengthen the timeout. Set the timeout "
                    "with init_process_group(timeout=...) / deepspeed.init_distributed(timeout=...) / DEEPSPEED_TIMEOUT "
                    "(minutes), and debug hangs with NCCL_DEBUG=INFO, TORCH_NCCL_DUMP_ON_TIMEOUT, TORCH_NCCL_DESYNC_DEBUG.")
    if v.get("TORCH_NCCL_BLOCKING_WAIT", "").lower() in _TRUE:
        add("info", f"TORCH_NCCL_BLOCKING_WAIT={v['TORCH_NCCL_BLOCKING_WAIT']}{where}: waits raise on timeout instead of "
                    "hanging; the timeout itself is init_process_group(timeout=...) (DeepSpeed: DEEPSPEED_TIMEOUT minutes).")
    for old, new in DEPRECATED_NCCL.items():
        if old != "NCCL_BLOCKING_WAIT" and old in v:
            add("info", f"{old}{where}: deprecated name; PyTorch reads {new} first.")
    if v.get("NCCL_P2P_DISABLE", "").lower() in _TRUE:
        add("warn", f"NCCL_P2P_DISABLE={v['NCCL_P2P_DISABLE']}{where}: disables NVLink/PCIe peer-to-peer; intra-node "
                    "collectives go through host memory at a fraction of the bandwidth.")
    if v.get("NCCL_IB_DISABLE", "").lower() in _TRUE:
        add("warn", f"NCCL_IB_DISABLE={v['NCCL_IB_DISABLE']}{where}: inter-node traffic uses TCP sockets instead of "
                    "InfiniBand/RoCE.")
    if "PYTORCH_ALLOC_CONF" in v and "PYTORCH_CUDA_ALLOC_CONF" in v and v["PYTORCH_ALLOC_CONF"] != v["PYTORCH_CUDA_ALLOC_CONF"]:
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
        add("warn", f"{', '.join(nccl[:4])}{'...' if len(nccl) > 4 else ''} set on a host without GPUs: DeepSpeed's runner "
                    "then detects the CPU accelerator and does NOT forward NCCL_* to the nodes. Set DS_ACCELERATOR=cuda "
                    "on this launching host or put them in .deepspeed_env.")
    if acc and acc != "cuda" and gpu_count > 0:
        add("warn", f"DS_ACCELERATOR={acc} while {gpu_count} NVIDIA GPU(s) are present: DeepSpeed will not use them.")
    if "CUDA_VISIBLE_DEVICES" in env_set:
        add("info", f"CUDA_VISIBLE_DEVICES={env_set['CUDA_VISIBLE_DEVICES']}: the deepspeed launcher turns it into "
                    "--include localhost:<ids> on one host, and ignores it when --include/--exclude/--num_gpus/--num_nodes "
                    "are given.")
    for f in ds_files:
        if f["error"]:
            add("warn", f"{f['path']}: {f['error']}")
    return adv


# --------------------------------------------------------------------------- version advice

FLA_BAD_TRITON = ((3, 4, 0), (3, 7, 1))


def versions_advice(vers: dict, torch_info: dict, gpus: list[dict], nvidia_smi_error: str | None) -> list[dict]:
    adv: list[dict] = []

    def add(level: str, msg: str) -> None:
        adv.append({"level": level, "section": "versions", "message": msg})

    tv = vtuple(torch_info.get("installed"))
    dsv = vtuple(vers.get("deepspeed", {}).get("version"))
    if tv is None:
        add("warn", "torch is not installed: training and `qwen-ds validate`'s DeepSpeed parser need it "
                    "(pip install torch); planning and estimates work without it.")
    elif torch_info.get("error"):
        add("warn", f"torch {torch_info['installed']}: {torch_info['error']}")
    if dsv is None:
        add("info", "deepspeed is not installed: plans and configs can be made, not run (pip install deepspeed).")
    elif tv and dsv >= (0, 17, 5) and tv < (2, 4, 0):
        add("warn", f"deepspeed {vers['deepspeed']['version']} with torch {torch_info['installed']}: deepspeed >= 0.17.5 "
                    "fails to import with torch < 2.4 (deepspeedai/DeepSpeed#7514).")
    if gpus and torch_info.get("imported") and not torch_info.get("cuda_available"):
        why = "it is a CPU-only build" if not (torch_info.get("cuda") or torch_info.get("hip")) else \
              f"its CUDA {torch_info.get('cuda')} may need a newer driver than {gpus[0].get('driver') or 'this one'}"
        add("warn", f"nvidia-smi sees {len(gpus)} GPU(s) but torch cannot use them: {why}.")

    fla = vers.get("flash-linear-attention", {}).get("version")
    cc1d = vers.get("causal-conv1d", {}).get("version")
    triton = vers.get("triton", {}).get("version")
    tl = vers.get("tilelang", {}).get("version")
    tri = vtuple(triton)
    ccs = [g.get("compute_capability") for g in gpus if g.get("compute_capability")]
    hopper = any(c.split(".")[0] == "9" for c in ccs)
    bad_triton = tri is not None and FLA_BAD_TRITON[0] <= tri < FLA_BAD_TRITON[1]
    if fla and bad_triton and not tl:
        msg = (f"flash-linear-attention with triton {triton}: on Hopper (sm_90) FLA refuses to train with Triton >= 3.4.0 "
               "and < 3.7.1 (its gated chunk backward, used by Qwen3-Next's Gated DeltaNet, raises RuntimeError: wrong "
               "results, fla-org/flash-linear-attention#640). Upgrade triton to >= 3.7.1 or pip install tilelang.")
        if hopper:
            add("warn", msg)
        elif not gpus:
            add("info", msg.replace("flash-linear-attention with", "If this environment runs on H100/H200:"))
    elif fla and bad_triton and tl and hopper:
        add("info", f"triton {triton} on Hopper: FLA routes the affected gated backward to TileLang (needs nvcc; "
                    "FLA_TILELANG=0 turns it off and FLA then raises).")
    if fla and not triton:
        add("warn", "flash-linear-attention is installed but triton is not: its kernels cannot run.")
    if not fla or not cc1d:
        miss = " and ".join(n for n, v in (("flash-linear-attention", fla), ("causal-conv1d", cc1d)) if not v)
        add("info", f"{miss} not installed: Qwen3-Next's linear-attention layers use transformers' PyTorch fallback "
                    "(correct but much slower; packed sequences with cu_seqlens raise without FLA). "
                    "Dense Qwen3 / Qwen3-MoE do not need them.")
    if gpus:
        no_bf16 = sorted({g["name"] for g in gpus if g.get("bf16") is False})
        if no_bf16:
            add("info", f"{', '.join(no_bf16)}: no bf16 (compute capability < 8.0): train in fp16 with loss scaling.")
    elif nvidia_smi_error:
        add("info", f"{nvidia_smi_error}: no NVIDIA driver here (or not on PATH), so GPUs, driver and interconnect are "
                    "not checked; plans for other machines still work (qwen-ds plan --gpu ...).")
    return adv


# --------------------------------------------------------------------------- collect


def _guard(fn: Callable[[], dict], what: str) -> dict:
    try:
        return fn()
    except Exception as exc:  # the doctor reports, it does not crash
        return {"error": f"{what}: {type(exc).__name__}: {one_line(exc)[:200]}"}


def gpus_section(run: Runner, probe: Callable[..., dict], env: Mapping[str, str]) -> tuple[dict, dict]:
    """(gpus section, torch info)."""
    res = run(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"])
    fields = GPU_QUERY
    if not res.ok and res.out == "" and res.error and "not found" not in res.error and "timed out" not in res.error:
        old = run(["nvidia-smi", f"--query-gpu={GPU_QUERY_OLD}", "--format=csv,noheader,nounits"])
        if old.ok:
            res, fields = old, GPU_QUERY_OLD
    rows = parse_gpu_query(res.out, fields) if res.ok else []
    torch_info = probe(devices=not rows)
    devices = describe_gpus(rows)
    source = "nvidia-smi" if rows else None
    if not rows and torch_info.get("devices"):
        devices = describe_gpus([{**d, "driver": None} for d in torch_info["devices"]])
        source = "torch"
    driver = next((r["driver"] for r in rows if r.get("driver")), None)
    section = {"source": source, "count": len(devices), "devices": devices, "driver": driver,
               "nvidia_smi_error": None if res.ok else res.error,
               "torch_visible": torch_info.get("device_count", 0),
               "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES")}
    return section, torch_info


def topology_section(run: Runner) -> dict:
    res = run(["nvidia-smi", "topo", "-m"])
    if not res.ok:
        return {"error": res.error, "advice": []}
    try:
        parsed = parse_topology(res.out)
    except ValueError as exc:
        return {"error": one_line(exc), "advice": []}
    return analyse_topology(parsed)


def collect(run: Runner = run_cmd, env: Mapping[str, str] | None = None, probe: Callable[..., dict] = torch_probe,
            which: Callable[[str], str | None] = shutil.which, home: Path | None = None, cwd: Path | None = None) -> dict:
    """Every section, each guarded: {versions, gpus, topology, limits, backends, environment, advice}."""
    env = os.environ if env is None else env
    holder: dict = {}

    def _gpus() -> dict:
        sec, tinfo = gpus_section(run, probe, env)
        holder["torch"] = tinfo
        return sec

    gpus = _guard(_gpus, "gpus")
    tinfo = holder.get("torch") or _guard(lambda: probe(devices=False), "torch")
    smi_err = gpus.get("nvidia_smi_error")
    vers = _guard(lambda: versions(tinfo, gpus.get("driver"), smi_err), "versions")
    topo = _guard(lambda: topology_section(run), "topology") if gpus.get("source") == "nvidia-smi" \
        else {"error": smi_err or "no GPUs seen", "advice": []}
    lim = _guard(limits, "limits")
    back = _guard(lambda: backends(which), "backends")
    envsec = _guard(lambda: environment(env, home, cwd), "environment")

    advice: list[dict] = []
    for sec, fn in (("versions", lambda: versions_advice(vers, tinfo, gpus.get("devices", []), smi_err)),
                    ("topology", lambda: topo.get("advice", [])),
                    ("limits", lambda: limits_advice(lim)),
                    ("backends", lambda: backends_advice(back)),
                    ("environment", lambda: _all_env_advice(envsec, gpus.get("count", 0)))):
        try:
            advice += fn()
        except Exception as exc:
            advice.append({"level": "info", "section": sec, "message": f"advice skipped: {type(exc).__name__}: {one_line(exc)[:200]}"})
    for name, sec in (("gpus", gpus), ("versions", vers), ("limits", lim), ("backends", back), ("environment", envsec)):
        if "error" in sec and set(sec) == {"error"}:
            advice.append({"level": "info", "section": name, "message": sec["error"]})
    order = {"warn": 0, "info": 1, "ok": 2}
    advice.sort(key=lambda a: order.get(a["level"], 3))
    return {"versions": vers, "gpus": gpus, "topology": topo, "limits": lim, "backends": back,
            "environment": envsec, "advice": advice}


def _all_env_advice(envsec: dict, gpu_count: int) -> list[dict]:
    adv = env_advice(envsec.get("set", {}))
    for f in envsec.get("deepspeed_env_files", []) + envsec.get("nccl_conf_files", []):
        adv += env_advice(f["vars"], f["path"])
    adv += env_context_advice(envsec.get("set", {}), gpu_count, envsec.get("deepspeed_env_files", []))
    return adv
