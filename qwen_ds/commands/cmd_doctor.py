"""`qwen-ds doctor`: versions, GPUs, interconnect, limits, launcher backends, environment, advice."""

from __future__ import annotations

import json
import platform

import click

from ..doctor import _bytes, collect
from ..format import table


def _yn(x: object) -> str:
    return "-" if x is None else ("yes" if x else "no")


def _versions(v: dict) -> list[str]:
    if "error" in v and len(v) == 1:
        return [v["error"]]
    rows = [[name, d["version"] or "-", d["detail"]] for name, d in v.items()]
    return [table(["component", "version", "detail"], rows, "lll")]


def _gpus(g: dict) -> list[str]:
    if "error" in g and len(g) == 1:
        return [g["error"]]
    out = []
    if g["devices"]:
        rows = [[str(d["index"]), d["name"], "-" if d["memory_gib"] is None else f"{d['memory_gib']:.1f}",
                 d["compute_capability"] or "-",
                 (d["catalog"] + (" (closest)" if d["catalog_match"] == "closest" else ""))
                 if d["catalog"] else "not in catalog",
                 _yn(d["bf16"]), _yn(d["fp8"])] for d in g["devices"]]
        out.append(table(["#", "name", "memory GiB", "CC", "catalog", "bf16", "fp8"], rows, "rlrllll"))
        src = f"source: {g['source']}" + (f"; driver {g['driver']}" if g["driver"] else "")
        src += f"; torch sees {g['torch_visible']}"
        if g.get("cuda_visible_devices") is not None:
            src += f" (CUDA_VISIBLE_DEVICES={g['cuda_visible_devices']})"
        out.append(src)
    else:
        out.append(f"no GPUs seen: {g['nvidia_smi_error'] or 'nvidia-smi listed none'}; "
                   f"torch sees {g['torch_visible']} CUDA device(s)")
    return out


def _topology(t: dict) -> list[str]:
    if "matrix" not in t:
        return [f"not available: {t.get('error', 'unknown')}"]
    gpus = t["gpus"]
    numa = t.get("numa", {})
    headers = [""] + [f"GPU{g}" for g in gpus] + (["NUMA"] if numa else [])
    rows = [[f"GPU{g}"] + t["matrix"][i] + ([numa.get(str(g), "-")] if numa else []) for i, g in enumerate(gpus)]
    out = [table(headers, rows, "l" + "r" * (len(headers) - 1))]
    pairs = ", ".join(f"{k} {v}" for k, v in t["pairs"].items() if v)
    from ..doctor import ranges

    doms = "; ".join(f"{ranges(d['gpus'])}"
                     + (f" (NV{d['min_nvlinks']}" + ("" if d["full_mesh"] else ", not all-to-all") + ")"
                        if d["size"] > 1 else " (no NVLink)") for d in t["nvlink_domains"])
    out.append(f"GPU pairs: {pairs or 'none'}")
    if not any(d["size"] > 1 for d in t["nvlink_domains"]):
        doms = "none"
    out.append(f"NVLink domains: {doms}; largest TP on NVLink: {t['max_tp_on_nvlink']}")
    return out


def _limits(lim: dict) -> list[str]:
    if "error" in lim and len(lim) == 1:
        return [lim["error"]]
    rows = []
    ml = lim.get("memlock", {})
    rows.append(["memlock (ulimit -l)",
                 ml.get("error") or f"{_bytes(ml.get('soft_bytes'))} (hard {_bytes(ml.get('hard_bytes'))})"])
    nf = lim.get("nofile", {})
    rows.append(["open files (ulimit -n)", nf.get("error") or
                 f"{nf.get('soft') or 'unlimited'} (hard {nf.get('hard') or 'unlimited'})"])
    shm = lim.get("shm", {})
    rows.append([shm.get("path", "/dev/shm"), shm.get("error") or
                 f"{_bytes(shm.get('total_bytes'))} ({_bytes(shm.get('free_bytes'))} free)"])
    cpus = lim.get("cpus", {})
    rows.append(["CPUs", f"{cpus.get('logical')} logical"
                 + (f", {cpus['usable']} usable by this process" if cpus.get("usable") else "")])
    rows.append(["NUMA nodes", str(lim.get("numa_nodes") or "-")])
    ram = lim.get("ram", {})
    mem = f"{_bytes(ram.get('total_bytes')) if ram.get('total_bytes') else '-'}"
    if ram.get("available_bytes"):
        mem += f" ({_bytes(ram['available_bytes'])} available)"
    if ram.get("cgroup_limit_bytes"):
        mem += f"; container limit {_bytes(ram['cgroup_limit_bytes'])}"
    rows.append(["RAM", mem])
    return [table(["limit", "value"], rows, "ll")]


def _backends(b: dict) -> list[str]:
    if "error" in b and len(b) == 1:
        return [b["error"]]
    rows = [[name, d.get("path") or (d.get("version") and f"version {d['version']}") or "not found", d["used_by"]]
            for name, d in b.items()]
    return [table(["tool", "found", "used by"], rows, "lll")]


def _environment(e: dict) -> list[str]:
    if "error" in e and len(e) == 1:
        return [e["error"]]
    rows = [[k, v, "environment"] for k, v in e["set"].items()]
    for f in e.get("deepspeed_env_files", []) + e.get("nccl_conf_files", []):
        rows += [[k, v, f["path"]] for k, v in f["vars"].items()]
    if not rows:
        return ["none set (NCCL_*, TORCH_NCCL_*, CUDA_VISIBLE_DEVICES, DS_ACCELERATOR, PYTORCH_CUDA_ALLOC_CONF, ...; "
                "no .deepspeed_env or nccl.conf)"]
    return [table(["variable", "value", "from"], rows, "lll")]


def _advice(adv: list[dict]) -> list[str]:
    if not adv:
        return ["nothing to report"]
    return [f"[{a['level']}] {a['section']}: {a['message']}" for a in adv]


@click.command("doctor", help="What this machine can run: versions, GPUs, interconnect (nvidia-smi topo -m), limits "
                              "(memlock, /dev/shm, open files), launcher backends and NCCL/torch environment, "
                              "with advice. "
                              "Works without GPUs or torch; always exits 0.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {versions, gpus, topology, limits, backends, environment, advice}.")
def command(as_json: bool) -> None:
    report = collect()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(f"qwen-ds doctor on {platform.node() or 'this host'} ({platform.system()} {platform.machine()})")
    for title, lines in (("Versions", _versions(report["versions"])), ("GPUs", _gpus(report["gpus"])),
                         ("Interconnect", _topology(report["topology"])), ("Limits", _limits(report["limits"])),
                         ("Launcher backends", _backends(report["backends"])),
                         ("Environment", _environment(report["environment"])), ("Advice", _advice(report["advice"]))):
        click.echo(f"\n{title}")
        for ln in lines:
            click.echo(ln)
