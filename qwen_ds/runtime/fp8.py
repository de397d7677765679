"""FP8 training for plans whose precision is fp8: DeepSpeed has no FP8 key, so the DeepSpeed config
is bf16 and the model's Linear layers are converted to torchao float8 training (tensorwise scaling)
before deepspeed.initialize. Needs a GPU of compute capability >= 8.9 (Ada, Hopper, Blackwell)
and torchao; otherwise the run stops with a message naming both. On DeepSpeed's CPU accelerator (tests)
torch's CPU float8 kernels emulate the recipe."""

from __future__ import annotations

import torch

from ..sharding import FP8_KEEP_BF16
from .common import RuntimeFailure


def fp8_filter(module: torch.nn.Module, fqn: str, head: bool = False) -> bool:
    """torchao module_filter_fn: Linear layers whose dims suit FP8 GEMMs (multiples of 16), not the ones of
    FP8_KEEP_BF16; with ``head`` the output head too (train --fp8-head)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    if fqn.endswith(FP8_KEEP_BF16) and not (head and fqn.endswith("lm_head")):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def check_fp8_device() -> str:
    """Where the FP8 GEMMs will run. A CUDA GPU needs compute capability >= 8.9. Without one, the
    rank runs on DeepSpeed's CPU accelerator and torch's CPU float8 kernels emulate the same recipe
    (slow: for tests and dry runs of an FP8 plan, never for real training)."""
    if not torch.cuda.is_available():
        return "cpu (float8 emulated by torch's CPU kernels: slow, for tests only)"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise RuntimeFailure(f"the plan is FP8 but {torch.cuda.get_device_name()} "
                             f"has compute capability {major}.{minor} < 8.9; "
                             "regenerate the plan with --precision bf16")
    return torch.cuda.get_device_name()


def apply_fp8(model: torch.nn.Module, recipe: dict | None, head: bool = False) -> int:
    """Convert eligible Linear layers in place (with ``head`` the output head too; a head tied to the
    embedding keeps sharing its weight); returns how many were converted."""
    check_fp8_device()
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError:
        raise RuntimeFailure("the plan is FP8 and needs torchao for float8 training: "
                             "pip install 'qwen-ds[fp8]'") from None
    recipe_name = (recipe or {}).get("recipe", "tensorwise")
    try:
        config = Float8LinearConfig.from_recipe_name(recipe_name)
    except (ValueError, KeyError, AssertionError):
        raise RuntimeFailure(f"FP8 recipe {recipe_name!r} is unknown to torchao; use tensorwise, rowwise or "
                             "rowwise_with_gw_hp (plan.json fp8_recipe.recipe)") from None
    before = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    convert_to_float8_training(model, config=config,
                               module_filter_fn=lambda m, fqn: fp8_filter(m, fqn, head))
    after = sum(type(m).__name__ == "Float8Linear" for m in model.modules())
    if after == 0:
        raise RuntimeFailure(f"FP8: none of the model's {before} Linear layers has FP8-compatible shapes")
    return after


def fp8_share(model: torch.nn.Module) -> float:
    """Share of the model's matmul weights (2-D and fused 3-D expert tensors and the head, the input
    embedding excluded) that sit in Float8Linear layers; ZeRO-3 partitioned parameters count by their full size
    (ds_numel)."""
    def numel(p) -> int:
        return int(getattr(p, "ds_numel", p.numel()))

    def ndim(p) -> int:
        return len(getattr(p, "ds_shape", p.shape))

    fp8 = sum(numel(m.weight) for m in model.modules() if type(m).__name__ == "Float8Linear")
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    total = sum(numel(p) for p in model.parameters() if ndim(p) >= 2 and p is not emb)
    if head is not None and head.weight is emb:  # tied: the head matmul is still computed
        total += numel(emb)
    return fp8 / total if total else 0.0
