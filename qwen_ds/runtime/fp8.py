"""FP8 training for plans whose precision is fp8: DeepSpeed has no FP8 key, so the DeepSpeed config
is bf16 and the model's Linear layers are converted to torchao float8 training (tensorwise scaling)
before deepspeed.initialize. Needs a GPU of compute capability >= 8.9 (Ada, Hopper, Blackwell)
and torchao; otherwise the run stops with a message naming both."""

from __future__ import annotations

import torch

from .common import RuntimeFailure

# never in FP8: the output head (loss precision), MoE routers (tiny, precision-sensitive)
SKIP = ("lm_head", "mlp.gate", "router", "shared_expert_gate", "embed")


def wants_fp8(plan: dict | None) -> bool:
    return bool(plan and (plan.get("fp8_recipe") or plan.get("plan", {}).get("precision") == "fp8"))


def fp8_filter(module: torch.nn.Module, fqn: str) -> bool:
    """torchao module_filter_fn: Linear layers whose dims suit FP8 GEMMs (multiples of 16)."""
    if not isinstance(module, torch.nn.Linear) or any(s in fqn for s in SKIP):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_fp8(model: torch.nn.Module, recipe: dict | None) -> int:
    """Convert eligible Linear layers in place; returns how many were converted."""
    if not torch.cuda.is_available():
        raise RuntimeFailure("the plan is FP8 but no GPU is visible; FP8 training needs compute capability >= 8.9 "
                             "(L40S, H100, H200, B200): regenerate the plan with --precision bf16")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise RuntimeFailure(f"the plan is FP8 but {torch.cuda.get_device_name()} has compute capability {major}.{minor} < 8.9; "
                             "regenerate the plan with --precision bf16")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise RuntimeFailure("the plan is FP8 and needs torchao (pip install torchao) for float8 training") from None
    recipe_name = (recipe or {}).get("recipe", "tensorwise")
    config = Float8LinearConfig.from_recipe_name(recipe_name)
    before = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    convert_to_float8_training(model, config=config, module_filter_fn=fp8_filter)
    after = sum(type(m).__name__ == "Float8Linear" for m in model.modules())
    if after == 0:
        raise RuntimeFailure(f"FP8: none of the model's {before} Linear layers has FP8-compatible shapes")
    return after
