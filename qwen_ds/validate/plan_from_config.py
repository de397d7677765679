"""Read the memory-relevant knobs of an existing DeepSpeed config back into a Plan, so validate can
give the same memory verdict as estimate, and gen-config can estimate its config as written (after --set)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InputError
from ..plan import Plan
from .rules import is_inference_config


def _num(v: Any, default: int) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() else default


def plan_from_config(cfg: dict[str, Any], *, pp: int = 1, checkpointing: bool = True, loss: str = "hf",
                     kernels: str = "hf", default_precision: str = "bf16") -> Plan:
    z = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
    stage = z.get("stage", 0) if isinstance(z.get("stage", 0), int) else 0

    def dev(key: str) -> str:
        block = z.get(key)
        d = block.get("device", "none") if isinstance(block, dict) else "none"
        return d if d in ("none", "cpu", "nvme") else "none"

    precision = default_precision
    if isinstance(cfg.get("bf16"), dict) and cfg["bf16"].get("enabled") is True:
        precision = "bf16"
    elif isinstance(cfg.get("fp16"), dict) and cfg["fp16"].get("enabled") is True:
        precision = "fp16"
    elif is_inference_config(cfg):
        precision = {"fp16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float": "fp32",
                     "int8": "int8"}.get(str(cfg.get("dtype", "fp16")), "fp16")
    else:
        precision = "fp32"
    tpb = cfg.get("tensor_parallel") if isinstance(cfg.get("tensor_parallel"), dict) else {}
    tp = _num(tpb.get("tp_size", tpb.get("autotp_size", 1)), 1)
    return Plan(
        zero_stage=stage, offload_optimizer=dev("offload_optimizer") if stage else "none",
        offload_param=dev("offload_param") if stage == 3 else "none",
        tp=max(tp, 1), pp=pp, micro_batch=max(_num(cfg.get("train_micro_batch_size_per_gpu"), 1), 1),
        grad_accum=max(_num(cfg.get("gradient_accumulation_steps"), 1), 1), checkpointing=checkpointing,
        precision=precision, loss=loss, kernels=kernels, overlap_comm=bool(z.get("overlap_comm", stage == 3)),
        reduce_bucket_size=_num(z.get("reduce_bucket_size"), 500_000_000),
        allgather_bucket_size=_num(z.get("allgather_bucket_size"), 500_000_000),
        prefetch_bucket_size=_num(z.get("stage3_prefetch_bucket_size", z.get("prefetch_bucket_size")), 50_000_000),
        param_persistence_threshold=_num(z.get("stage3_param_persistence_threshold", z.get("param_persistence_threshold")), 100_000),
        max_live_parameters=_num(z.get("stage3_max_live_parameters"), 1_000_000_000),
        max_reuse_distance=_num(z.get("stage3_max_reuse_distance"), 1_000_000_000),
        sub_group_size=_num(z.get("sub_group_size"), 1_000_000_000),
        hpz_partition_size=max(_num(z.get("zero_hpz_partition_size"), 1), 1) if stage == 3 else 1,
        quantized_weights=stage == 3 and z.get("zero_quantized_weights") is True,
        quantized_gradients=stage == 3 and z.get("zero_quantized_gradients") is True,
    )


def plan_with_edits(plan: Plan, rendered: dict[str, Any], edited: dict[str, Any]) -> tuple[Plan, dict[str, tuple[Any, Any]]]:
    """The plan ``edited`` runs, where ``rendered`` is the config rendered from ``plan`` and ``edited``
    that config after --set: each knob that reads back differently from the two configs takes its
    value in ``edited``; the rest stay the plan's, including what a config does not say (pipeline
    stages, checkpointing, loss path, kernels, FP8 over a bf16 config) and what it leaves to
    DeepSpeed's defaults. Returns (plan, {knob: (before, after)}); no edit -> (plan, {})."""
    kw = dict(pp=plan.pp, checkpointing=plan.checkpointing, loss=plan.loss, kernels=plan.kernels)
    try:
        before, after = plan_from_config(rendered, **kw), plan_from_config(edited, **kw)
        changed = {f.name: (getattr(before, f.name), getattr(after, f.name)) for f in dataclasses.fields(Plan)
                   if getattr(before, f.name) != getattr(after, f.name)}
        return (dataclasses.replace(plan, **{k: new for k, (_, new) in changed.items()}) if changed else plan), changed
    except InputError as exc:  # Plan's own checks name flags; here the edited config is what says it
        raise InputError(f"--set: the config as written is no plan qwen-ds can estimate ({exc})") from None
