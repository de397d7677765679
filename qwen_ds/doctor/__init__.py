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

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

from ..errors import one_line
from .gpus import GPU_QUERY, GPU_QUERY_OLD, describe_gpus, parse_gpu_query, precision_support
from .probes import (FLA_BAD_TRITON, SECTIONS, TIMEOUT_S, CmdResult, Runner, dist_version, module_present, run_cmd,
                     torch_probe, versions, versions_advice, vtuple)
from .system import (BACKENDS, DEPRECATED_NCCL, ENV_NAMES, ENV_PREFIXES, NOFILE_MIN, SHM_MIN, backends, backends_advice,
                     deepspeed_env_files, env_advice, env_context_advice, environment, limits, limits_advice,
                     nccl_conf_files, watched)
from .system import _bytes  # noqa: F401  (used by the doctor command)
from .topology import LINK_CLASSES, analyse_topology, classify_link, parse_topology, ranges, topology_advice

# the package's public names, as before the split into gpus / probes / system / topology
__all__ = [
    "GPU_QUERY", "GPU_QUERY_OLD", "describe_gpus", "parse_gpu_query", "precision_support",
    "FLA_BAD_TRITON", "SECTIONS", "TIMEOUT_S", "CmdResult", "Runner", "dist_version", "module_present", "run_cmd",
    "torch_probe", "versions", "versions_advice", "vtuple",
    "BACKENDS", "DEPRECATED_NCCL", "ENV_NAMES", "ENV_PREFIXES", "NOFILE_MIN", "SHM_MIN", "backends", "backends_advice",
    "deepspeed_env_files", "env_advice", "env_context_advice", "environment", "limits", "limits_advice",
    "nccl_conf_files", "watched",
    "LINK_CLASSES", "analyse_topology", "classify_link", "parse_topology", "ranges", "topology_advice",
    "collect", "gpus_section", "topology_section",
]


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
            which: Callable[[str], str | None] = shutil.which, home: Path | None = None,
            cwd: Path | None = None) -> dict:
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
            advice.append({"level": "info", "section": sec,
                           "message": f"advice skipped: {type(exc).__name__}: {one_line(exc)[:200]}"})
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

