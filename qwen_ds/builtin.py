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


def compile_reason(choice: str, model_type: str, pp: int, zero_stage: int, tp: int, cuda: bool,
                   finetune: str = "full") -> str | None:
    """Why the built-in trainer's --compile CHOICE leaves the decoder layers eager (None: it compiles them;
    runtime/compiled.py)."""
    if choice == "off":
        return "--compile off"
    if pp > 1:
        return "pipeline stages run the layers inside DeepSpeed's PipelineModule"
    if zero_stage == 3:
        return "ZeRO-3 gathers parameters in hooks inside each layer (a graph break at every parameter)"
    if choice == "on":
        return None
    if tp > 1:
        return "not measured with tensor parallelism (--compile on compiles the layers)"
    if not cuda:
        return "no CUDA device (--compile on compiles on the CPU too)"
    if model_type not in COMPILED_MODEL_TYPES:
        return f"not measured for {model_type} layers (--compile on compiles them)"
    if finetune != "full":
        return f"not measured with --finetune {finetune} (peft adapters, 4-bit layers; --compile on compiles them)"
    return None


def builtin_compiles(family: str, plan: Plan) -> bool:
    """Whether the built-in trainer's --compile auto compiles this plan's layers on a GPU: the planner's speed model
    times the others eager."""
    return compile_reason("auto", family, plan.pp, plan.zero_stage, plan.tp, True, plan.finetune) is None


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
