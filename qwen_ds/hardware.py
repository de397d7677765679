"""GPU catalog (data/gpus.json, every figure with its source) and the Cluster shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import InputError, QwenDsError, one_line
from .units import MIB

_DATA = Path(__file__).resolve().parent / "data" / "gpus.json"


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int
    compute_capability: str
    bf16: bool
    fp8: bool
    fp16_tflops: float
    bf16_tflops: float | None
    fp8_tflops: float | None
    hbm_gbps: float
    nvlink_gbps: float
    pcie_gbps: float
    notes: str = ""

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    def peak_tflops(self, precision: str) -> float:
        """Dense tensor-core peak for a compute precision (fp32 training runs on TF32/FP32 paths: use fp16/4)."""
        if precision == "fp8" and self.fp8_tflops:
            return self.fp8_tflops
        if precision == "bf16" and self.bf16_tflops:
            return self.bf16_tflops
        if precision == "fp32":
            return self.fp16_tflops / 4
        return self.fp16_tflops


@lru_cache(maxsize=1)
def _catalog() -> tuple[dict, ...]:
    with open(_DATA, encoding="utf-8") as fh:
        return tuple(json.load(fh)["gpus"])


def gpu_names() -> list[str]:
    return [g["name"] for g in _catalog()]


def gpu_entries() -> tuple[dict, ...]:
    """The raw catalog entries, sources included."""
    return _catalog()


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _family_members(key: str) -> list[dict]:
    """Catalog entries named KEY-something: 'a100' -> A100-40GB and A100-80GB."""
    return [e for e in _catalog() if e["name"].lower().startswith(key + "-")]


def _refuse_ambiguous(name: str, key: str) -> None:
    """A bare family name ('A100', 'V100', 'H100') has several catalog entries whose memory or speed
    differ, so every estimate would depend on which one the alias happened to map to."""
    members = _family_members(key)
    if len(members) < 2 or any(key == e["name"].lower() for e in _catalog()):
        return
    what = "memory differs" if len({e["memory_bytes"] for e in members}) > 1 else "peak TFLOP/s and bandwidth differ"
    raise InputError(f"--gpu {one_line(name)} is ambiguous: {', '.join(e['name'] for e in members)} ({what}); "
                     "pick one (see `qwen-ds gpus`)")


@lru_cache(maxsize=64)
def get_gpu(name: str) -> GPU:
    key = _normalise(name)
    _refuse_ambiguous(name, key)
    for entry in _catalog():
        if key == entry["name"].lower() or key in entry.get("aliases", ()):
            fields = {f: entry[f] for f in GPU.__dataclass_fields__ if f in entry}
            return GPU(**fields)
    raise InputError(f"--gpu {one_line(name)}: unknown GPU; choose one of {', '.join(gpu_names())} (see `qwen-ds "
                     "gpus`)")


def _family(entry: dict) -> str:
    # 'H100-SXM' -> 'h100', 'RTX-4090' -> '4090', 'A100-80GB' -> 'a100'
    parts = entry["name"].lower().split("-")
    return parts[1] if parts[0] == "rtx" else parts[0]


def match_catalog(name: str, memory_mib: int | None) -> tuple[str | None, str | None]:
    """(catalog name, 'exact' | 'closest') for an nvidia-smi GPU name, or (None, None).

    exact: the name (or without 'NVIDIA '/'Tesla ') is a catalog alias (get_gpu);
    closest: same family word (e.g. 'A100') and memory within 10 % (e.g. 'NVIDIA A100 80GB PCIe')."""
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


@dataclass(frozen=True)
class Cluster:
    """nodes x GPUs of one type. ``cpu_mem_per_node`` (bytes) bounds CPU offload when known."""

    gpu: GPU
    nodes: int = 1
    gpus_per_node: int = 1
    cpu_mem_per_node: int | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise InputError(f"--nodes {self.nodes}: must be >= 1")
        if self.gpus_per_node < 1:
            raise InputError(f"--gpus-per-node {self.gpus_per_node}: must be >= 1")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node
