"""nvidia-smi GPU rows, mapped to the qwen-ds GPU catalog."""

from __future__ import annotations

import csv
import re

from .probes import *  # noqa: F401,F403

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


def precision_support(cc: str | None) -> tuple[bool | None, bool | None]:
    """(bf16, fp8) from compute capability: bf16 needs >= 8.0, fp8 tensor cores >= 8.9."""
    if not cc:
        return None, None
    major, minor = (int(x) for x in cc.split("."))
    return (major, minor) >= (8, 0), (major, minor) >= (8, 9)


def describe_gpus(rows: list[dict]) -> list[dict]:
    from ..hardware import get_gpu, match_catalog

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

