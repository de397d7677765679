"""nvidia-smi GPU rows, mapped to the qwen-ds GPU catalog."""

from __future__ import annotations

import csv
import re

from ..errors import QwenDsError
from ..units import MIB
from .probes import *  # noqa: F401,F403
from .probes import TIMEOUT_S

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
    from ..hardware import get_gpu, gpu_entries

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
    from ..hardware import get_gpu

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

