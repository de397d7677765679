"""`nvidia-smi topo -m` parsed into links and NVLink domains, with advice."""

from __future__ import annotations

import re
from typing import Callable, Iterable



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
        add("ok", f"{'Both' if n == 2 else f'All {n}'} GPUs are NVLink all-to-all (NV{d['min_nvlinks']}): TP/EP up to "
                  f"{n} stays on NVLink; across nodes keep TP <= {n} and use ZeRO-3 hpZ = {n} (gen-config --hpz {n}).")
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
                    + (f", prefer ZeRO with hpZ = {size} (gen-config --hpz {size}) so weight all-gathers stay "
                       "inside a domain."
                       if len(sizes) == 1 and n % size == 0 else "."))
    else:
        worst = max((cls(x, y) for i, x in enumerate(gpus) for y in gpus[i + 1:]),
                    key=lambda c: LINK_CLASSES.index(c) if c in LINK_CLASSES else -1)
        add("warn",
            f"No NVLink between GPUs: all GPU-to-GPU traffic is PCIe (worst path: {_LINK_WORDS.get(worst, worst)}). "
                    "TP > 1 puts two all-reduces per layer on PCIe: prefer TP = 1 with ZeRO (overlap_comm) or PP.")
    socket_groups = a["socket_groups"]
    if len(socket_groups) > 1 and not (len(domains) == 1):
        add("info", f"GPU groups {' / '.join(ranges(g) for g in socket_groups)} sit on different CPU sockets (SYS): "
                    "peer-to-peer between them usually goes through host memory, so NCCL uses its shared-memory "
                    "transport; keep /dev/shm large and leave NCCL_P2P_DISABLE / NCCL_SHM_DISABLE unset.")
    return adv


# --------------------------------------------------------------------------- limits


