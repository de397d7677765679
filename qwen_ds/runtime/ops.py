"""DeepSpeed ops a run will compile on first use (JIT, about a minute each), named before they are built so
the wait is explained: CPU Adam for an offloaded optimizer, FusedAdam for Adam on CUDA, async I/O for NVMe,
and the shared-memory all-reduce of DeepSpeed's CPU accelerator."""

from __future__ import annotations

import os


def ops_to_load(ds_config: dict, on_cuda: bool) -> list[str]:
    """DeepSpeed op-builder class names the engine of this config loads."""
    zero = ds_config.get("zero_optimization") if isinstance(ds_config.get("zero_optimization"), dict) else {}
    offload = {k: (zero.get(k) or {}).get("device") for k in ("offload_optimizer", "offload_param")
               if isinstance(zero.get(k), dict)}
    opt = ds_config.get("optimizer") if isinstance(ds_config.get("optimizer"), dict) else {}
    adam = str(opt.get("type", "")).lower() in ("adam", "adamw") and not (opt.get("params") or {}).get("torch_adam")
    names = []
    if offload.get("offload_optimizer") in ("cpu", "nvme"):
        names.append("CPUAdamBuilder")
    elif adam and on_cuda:
        names.append("FusedAdamBuilder")
    if "nvme" in offload.values():
        names.append("AsyncIOBuilder")
    if not on_cuda:
        names.append("ShareMemCommBuilder")
    return names


def pending_op_builds(ds_config: dict, on_cuda: bool) -> list[str]:
    """Names of the ops of ops_to_load that are neither pre-built into the DeepSpeed install nor in torch's
    extension cache: what the first deepspeed.initialize will compile."""
    from deepspeed.accelerator import get_accelerator

    try:
        from deepspeed.git_version_info import installed_ops
    except ImportError:
        installed_ops = {}
    try:
        from torch.utils.cpp_extension import _get_build_directory
    except ImportError:
        return []
    out = []
    for cls in ops_to_load(ds_config, on_cuda):
        try:
            builder = get_accelerator().create_op_builder(cls)
        except Exception:  # an accelerator without this builder
            builder = None
        if builder is None or installed_ops.get(builder.name):
            continue
        try:
            folder = _get_build_directory(builder.name, verbose=False)
            built = os.path.isfile(os.path.join(folder, f"{builder.name}.so"))
        except (OSError, RuntimeError):
            built = False
        if not built:
            out.append(builder.name)
    return out
