"""validate_config(cfg, ctx) -> problems: JSON Schema + semantic rules + (optionally) DeepSpeed itself."""

from __future__ import annotations

from typing import Any

from ..knobs import deepspeed_batch_ranks
from .problems import Problem
from .rules import Context, is_inference_config, run_rules
from .schema import known_top_level_keys, schema_problems

__all__ = ["Context", "Problem", "validate_config", "is_inference_config"]


def validate_config(cfg: dict[str, Any], ctx: Context, use_deepspeed: bool = False) -> list[Problem]:
    """Every problem found, not only the first. DeepSpeed's parser runs only when asked (in a child
    process: it imports torch) and only on configs our own checks pass (it stops at its first error);
    deepspeed_ran(problems) tells whether it ran."""
    import dataclasses

    ctx = dataclasses.replace(ctx, known_top_level=known_top_level_keys())
    inference = is_inference_config(cfg)
    problems = run_rules(cfg, ctx)
    seen = {p.path for p in problems}
    problems += [p for p in schema_problems(cfg, inference) if p.path not in seen]
    if use_deepspeed and not any(p.severity == "error" for p in problems):
        # DeepSpeed stops at its first error; run it last, on configs our checks passed
        from .dscheck import deepspeed_problems_subprocess

        world = deepspeed_batch_ranks(ctx.world_size or 1, ctx.pp)
        problems += deepspeed_problems_subprocess(cfg, world, inference)
    return problems
