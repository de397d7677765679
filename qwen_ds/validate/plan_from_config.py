"""Read the memory-relevant knobs of an existing DeepSpeed config back into a Plan, so validate can
give the same memory verdict as estimate."""

from __future__ import annotations

from typing import Any

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
        sub_group_size=_num(z.get("sub_group_size"), 1_000_000_000),
        hpz_partition_size=max(_num(z.get("zero_hpz_partition_size"), 1), 1) if stage == 3 else 1,
    )
