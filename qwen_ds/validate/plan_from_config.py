"""Read the memory-relevant knobs of an existing DeepSpeed config back into a Plan, so validate can
give the same memory verdict as estimate, and gen-config can estimate its config as written (after --set)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import InputError
from ..knobs import DS_KEYS, DsKey, Plan, lookup
from .rules import is_inference_config


def _num(v: Any, default: int) -> int:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() else default


def _ds_number(cfg: dict[str, Any], key: DsKey) -> int:
    """The knob's value in the config (first of its keys present), else DeepSpeed's default."""
    for dotted in key.keys:
        value = lookup(cfg, dotted)
        if value is not None:
            return _num(value, key.ds_default)
    return key.ds_default


def _precision(cfg: dict[str, Any], default_precision: str) -> str:
    if isinstance(cfg.get("bf16"), dict) and cfg["bf16"].get("enabled") is True:
        return "bf16"
    if isinstance(cfg.get("fp16"), dict) and cfg["fp16"].get("enabled") is True:
        return "fp16"
    if is_inference_config(cfg):
        return {"fp16": "fp16", "half": "fp16", "bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float": "fp32",
                "int8": "int8"}.get(str(cfg.get("dtype", "fp16")), "fp16")
    return "fp32"


def plan_from_config(cfg: dict[str, Any], *, pp: int = 1, checkpointing: bool = True, loss: str = "hf",
                     kernels: str = "hf", default_precision: str = "bf16") -> Plan:
    """The Plan a DeepSpeed config runs: the knobs of qwen_ds.knobs.DS_KEYS by their keys, the rest
    (DS_SPECIAL) here; what a config does not say (pipeline stages, checkpointing, loss path,
    kernels) from the arguments."""
    z = cfg.get("zero_optimization") if isinstance(cfg.get("zero_optimization"), dict) else {}
    stage = z.get("stage", 0) if isinstance(z.get("stage", 0), int) else 0

    def dev(key: str) -> str:
        block = z.get(key)
        d = block.get("device", "none") if isinstance(block, dict) else "none"
        return d if d in ("none", "cpu", "nvme") else "none"

    defaults = {f.name: f.default for f in dataclasses.fields(Plan)}
    numbers = {k.name: _ds_number(cfg, k) if stage == 3 or not k.stage3 else defaults[k.name] for k in DS_KEYS}
    for name in ("micro_batch", "grad_accum", "tp", "hpz_partition_size"):
        numbers[name] = max(numbers[name], 1)
    return Plan(
        zero_stage=stage, offload_optimizer=dev("offload_optimizer") if stage else "none",
        offload_param=dev("offload_param") if stage == 3 else "none",
        pp=pp, checkpointing=checkpointing, precision=_precision(cfg, default_precision), loss=loss, kernels=kernels,
        overlap_comm=bool(z.get("overlap_comm", stage == 3)),
        quantized_weights=stage == 3 and z.get("zero_quantized_weights") is True,
        quantized_gradients=stage == 3 and z.get("zero_quantized_gradients") is True,
        **numbers,
    )


def plan_with_edits(plan: Plan, rendered: dict[str, Any],
                    edited: dict[str, Any]) -> tuple[Plan, dict[str, tuple[Any, Any]]]:
    """The plan ``edited`` runs, where ``rendered`` is the config rendered from ``plan`` and ``edited``
    that config after --set: each knob that reads back differently from the two configs takes its
    value in ``edited``; the rest stay the plan's, including what a config does not say (pipeline
    stages, checkpointing, loss path, kernels, FP8 over a bf16 config) and what it leaves to
    DeepSpeed's defaults. Returns (plan, {knob: (before, after)}); no edit -> (plan, {})."""
    kw = dict(pp=plan.pp, checkpointing=plan.checkpointing, loss=plan.loss, kernels=plan.kernels)
    try:
        before, after = plan_from_config(rendered, **kw), plan_from_config(edited, **kw)
        # a stage-3 key reads as None (derived) below ZeRO-3: the edited config does not say it, the plan's stays
        changed = {f.name: (getattr(before, f.name), getattr(after, f.name)) for f in dataclasses.fields(Plan)
                   if getattr(before, f.name) != getattr(after, f.name) and getattr(after, f.name) is not None}
        return (dataclasses.replace(plan, **{k: new for k, (_, new) in changed.items()}) if changed else plan), changed
    except InputError as exc:  # Plan's own checks name flags; here the edited config is what says it
        raise InputError(f"--set: the config as written is no plan qwen-ds can estimate ({exc})") from None
