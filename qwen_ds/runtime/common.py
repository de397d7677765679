"""Shared by train and infer: reading plan.json / ds_config.json, distributed init, building the
HF model the way ZeRO-3 needs it, and rank-0 printing."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

# DeepSpeed's zero.Init patches torch.Tensor.__new__; dynamo imported later inside it fails with
# "Signature mismatch ... tensor_pynew" (reference/deepspeed.md §6): import it first.
import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401

from ..units import GIB  # noqa: E402

if TYPE_CHECKING:
    from ..plandoc import PlanDocument

# ZeRO-3 leaf modules: gathered whole at their forward (no per-expert fetches, no hangs on experts
# a rank's tokens skip).
LEAF_CLASSES = ("Qwen3MoeSparseMoeBlock", "Qwen3NextSparseMoeBlock", "Qwen2MoeSparseMoeBlock", "MixtralSparseMoeBlock")
# modules that read a child's weight without calling the child: (class, child attribute). Qwen3-Next's
# Gated DeltaNet passes conv1d.weight to the causal-conv function; under ZeRO-3 that weight must be
# registered as an external parameter of the Gated DeltaNet module or it is an empty partition.
EXTERNAL_PARAMS = (("Qwen3NextGatedDeltaNet", "conv1d"),)


class RuntimeFailure(Exception):
    """A failure of the job the user can act on: printed once, exit 1."""


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def log0(*args: Any) -> None:
    if rank() == 0:
        print(*args, flush=True)


def read_config_and_plan(args: Any) -> tuple[dict, PlanDocument | None]:
    """ds_config.json and plan.json as this rank reads them (bounded reads, the plan's fields typed).
    launch checked the pair before starting, but every rank reads the files again later: a
    gen-config --force into the same directory in between would give this rank a config its plan
    (and its memory estimate) was not made for."""
    from ..errors import InputError
    from ..pairing import mismatch_line
    from ..plandoc import read_plan_document
    from ..validate.parse import read_config

    try:
        ds_config = read_config(args.config)
        plan = read_plan_document(args.plan, "--plan") if args.plan else None
    except InputError as exc:
        raise RuntimeFailure(str(exc)) from None
    check = plan.check_config(ds_config) if plan is not None else None
    if check is not None and check.status == "mismatch":
        raise RuntimeFailure(mismatch_line(args.config, args.plan, check))
    return ds_config, plan


def rank_device() -> torch.device:
    """This rank's GPU (LOCAL_RANK), or the CPU without CUDA."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if torch.cuda.is_available() else \
        torch.device("cpu")


def init_distributed() -> str:
    """nccl on GPUs, gloo on CPU (DeepSpeed's CPU accelerator)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(rank_device())
    return get_accelerator().device_name()


def shutdown_distributed() -> None:
    """Barrier and destroy the process group before the interpreter exits: otherwise gloo / NCCL
    threads can still be alive at shutdown and the process aborts ("terminate called without an
    active exception", exit 134) after a successful run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def exit_process(rc: int) -> None:
    """Leave the rank process with rc once its work is done and flushed, skipping C++ static
    destructors: even after destroy_process_group, a gloo/NCCL or DeepSpeed helper thread can be
    torn down joinable at interpreter exit and abort the process ("terminate called without an
    active exception", exit 134) after a run that succeeded: 1 of 15 launches of a 2-rank ZeRO-3
    script on CPU aborted so, after destroy_process_group had returned (DeepSpeed 0.19.8, torch 2.13)."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


def run_entry(fn, args) -> int:
    """Run a runtime entry point: 0 on success (process group shut down cleanly), 1 on failure with
    one line naming the rank; the traceback only with QWEN_DS_DEBUG=1."""
    import traceback

    try:
        rc = fn(args)
        shutdown_distributed()
        return rc
    except RuntimeFailure as exc:
        print(f"error: rank {rank()}: {exc}", file=sys.stderr, flush=True)
        return 1
    except MemoryError as exc:  # host RAM (CPU offload buffers, pinned memory)
        print(f"error: rank {rank()}: out of host memory ({exc}); the plan's CPU bytes per node: "
              f"{planned_gib(args, 'cpu_total_bytes_per_node')}; lower offload or ranks per node",
              file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # any other failure of the job
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            print(f"error: rank {rank()}: {oom_report(args, exc)}", file=sys.stderr, flush=True)
            return 1
        print(f"error: rank {rank()}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if os.environ.get("QWEN_DS_DEBUG"):
            traceback.print_exc()
        return 1


def planned_gib(args, key: str) -> str:
    """A memory figure of the run's plan.json (``memory.<key>``) in GiB, or 'unknown' without a plan."""
    from ..errors import InputError
    from ..plandoc import read_plan_document

    try:
        doc = read_plan_document(args.plan, "--plan") if getattr(args, "plan", None) else None
    except InputError:
        doc = None
    value = getattr(doc.memory, key, None) if doc is not None and doc.memory is not None else None
    return f"{value / GIB:.1f} GiB" if isinstance(value, (int, float)) else "unknown (no plan.json)"


def oom_report(args, exc: BaseException) -> str:
    """One line for a GPU out-of-memory: what the allocator held, what the plan predicted, what to change."""
    import torch

    total = None
    if torch.cuda.is_available():
        try:
            total = torch.cuda.mem_get_info()[1]
        except RuntimeError:
            pass
    held = (f"peak allocated {torch.cuda.max_memory_allocated() / GIB:.1f} GiB, "
            f"reserved {torch.cuda.max_memory_reserved() / GIB:.1f} GiB"
            f"{f' of {total / GIB:.1f} GiB' if total else ''}" if torch.cuda.is_available() else "no CUDA device")
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "CUDA out of memory"
    return (f"GPU out of memory ({first}); {held}; "
            f"the plan predicted {planned_gib(args, 'gpu_allocated_bytes')} allocated, "
            f"{planned_gib(args, 'gpu_reserved_bytes')} reserved per GPU; "
            "check for other processes on the GPU and a --seq-len "
            "or --loss differing from the plan, else regenerate it with a lower --headroom (e.g. 0.85) "
            "or a smaller --micro-batch")


def model_source(plan: PlanDocument | None, model_arg: str | None) -> dict:
    """The model's config.json fields: from --model (preset / config.json / HF dir), else the plan's."""
    if model_arg:
        from ..models import load_model

        return dict(load_model(model_arg).config)
    if plan is not None and plan.model is not None and plan.model.config is not None:
        return dict(plan.model.config)
    raise RuntimeFailure("no model: pass --plan plan.json (from qwen-ds gen-config) or --model")


def model_spec(plan: PlanDocument | None, model_arg: str | None):
    """qwen-ds's ModelSpec of the model the run builds (FLOPs, AutoTP support)."""
    from ..models.spec import spec_from_config

    return spec_from_config(model_source(plan, model_arg), name="model")


def model_config(plan: PlanDocument | None, model_arg: str | None):
    """HF config of the model the run builds (see model_source)."""
    from transformers import AutoConfig

    raw = model_source(plan, model_arg)
    model_type = raw.pop("model_type")
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        raw.pop(key, None)
    cfg = AutoConfig.for_model(model_type, **raw)
    cfg.use_cache = False
    return cfg


def torch_dtype(ds_config: dict) -> torch.dtype:
    if ds_config.get("bf16", {}).get("enabled") is True or ds_config.get("dtype") in ("bf16", "bfloat16"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled") is True or ds_config.get("dtype") in ("fp16", "half"):
        return torch.float16
    return torch.float32


def build_model(hf_config, ds_config: dict, weights: str | None, seed: int, for_training: bool,
                on_device: bool = False):
    """Random init (seeded) or from_pretrained(weights), in the config's training dtype. Under ZeRO-3 a live
    HfDeepSpeedConfig makes transformers build the model inside zero.Init, partitioned from the start; MoE
    blocks become ZeRO-3 leaf modules (LEAF_CLASSES). Otherwise, with ``on_device`` and a GPU, the weights
    are created (and initialised, or loaded from the safetensors) on this rank's GPU: no CPU fp32 detour and
    no host-to-device copy of the whole model (a Qwen3-4B plan spent minutes there, issue #15)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    keep = HfDeepSpeedConfig(ds_config) if zero3 else None  # noqa: F841  must stay alive while building
    torch.manual_seed(seed)
    dtype = torch_dtype(ds_config)
    device = rank_device() if on_device and not zero3 and torch.cuda.is_available() else None
    if weights:
        extra = {"device_map": {"": device}} if device is not None else {}
        model = AutoModelForCausalLM.from_pretrained(weights, config=hf_config, dtype=dtype, **extra)
    elif device is not None:
        with device:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    if zero3:
        from deepspeed.utils import set_z3_leaf_modules

        classes = {type(m) for m in model.modules() if type(m).__name__ in LEAF_CLASSES}
        if classes:
            set_z3_leaf_modules(model, list(classes))
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        for module in model.modules():
            for cls_name, child in EXTERNAL_PARAMS:
                if type(module).__name__ == cls_name:
                    for p in getattr(module, child).parameters(recurse=False):
                        register_external_parameter(module, p)
    if for_training:
        model.config.use_cache = False
    return model, keep
