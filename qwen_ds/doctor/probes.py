"""Running tools safely, package versions without importing them, the torch probe, version advice."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable

from ..errors import one_line
from ..units import MIB


TIMEOUT_S = 15

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
        return CmdResult(False, proc.stdout,
                         f"{' '.join(argv[:2])}: exit {proc.returncode}" + (f": {msg[:200]}" if msg else ""))
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
                info["nccl"] = (f"{v // 1000}.{v % 1000 // 100}.{v % 100}" if v < 10000
                                else f"{v // 10000}.{v % 10000 // 100}.{v % 100}")
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
    put("NCCL (torch)", t["nccl"],
        "" if t["nccl"] else ("needs a CUDA build of torch" if t["imported"] and not t["cuda"] else
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
        add("warn", f"deepspeed {vers['deepspeed']['version']} with torch {torch_info['installed']}: deepspeed >= "
                    "0.17.5 fails to import with torch < 2.4 (deepspeedai/DeepSpeed#7514).")
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
        msg = (f"flash-linear-attention with triton {triton}: on Hopper (sm_90) FLA refuses to train with Triton >= "
               "3.4.0 and < 3.7.1 (its gated chunk backward, used by Qwen3-Next's Gated DeltaNet, raises RuntimeError: "
               "wrong results, fla-org/flash-linear-attention#640). Upgrade triton to >= 3.7.1 or pip install "
               "tilelang.")
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


