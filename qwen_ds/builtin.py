"""What the built-in runtime (``qwen-ds launch ... train`` / ``infer``, qwen_ds/runtime/) runs. gen-config
asks before it prints a launch line, and the runtime asks again before it starts, so a plan the built-in
entry points cannot run is marked "needs your own script" where it is written, not found out on the nodes."""

from __future__ import annotations

from .knobs import Plan

#: model types runtime/pipeline.py builds as a DeepSpeed PipelineModule
PIPE_MODEL_TYPES = ("qwen3", "qwen3_moe", "qwen3_next")
#: model types whose decoder layers the built-in trainer compiles on a GPU (--compile auto): measured to pay
#: (benchmarks/results/trainer_speed_*.md)
COMPILED_MODEL_TYPES = ("qwen3",)


def builtin_compiles(family: str, plan: Plan) -> bool:
    """Whether the built-in trainer's --compile auto compiles this plan's layers on a GPU (runtime/compiled.py):
    a measured model type, no pipeline stages, ZeRO below 3, no tensor parallelism."""
    return family in COMPILED_MODEL_TYPES and plan.pp == 1 and plan.zero_stage < 3 and plan.tp == 1


def builtin_gap(family: str, plan: Plan, mode: str) -> str | None:
    """Why the built-in runtime cannot run this plan (one clause naming what is missing), or None."""
    if mode == "train" and plan.finetune == "qlora" and plan.zero_stage == 3:
        return ("the built-in trainer keeps QLoRA's 4-bit base whole on each GPU (ZeRO 0-2), not partitioned by "
                "ZeRO-3 (gen-config --zero 2, or --for hf-trainer for LLaMA-Factory)")
    if mode == "train" and plan.finetune != "full" and plan.pp > 1:
        return f"the built-in trainer runs --finetune {plan.finetune} without pipeline stages"
    if mode == "train" and plan.pp > 1:
        if family not in PIPE_MODEL_TYPES:
            return (f"the built-in trainer builds pipeline stages for model types {', '.join(PIPE_MODEL_TYPES)}, "
                    f"not {family}")
        if plan.precision == "fp8":
            return "the built-in trainer does not run FP8 with pipeline stages"
    return None
