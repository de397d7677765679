"""Rules for the "optimizer" and "scheduler" blocks: deepspeed.initialize builds Type(params, **params)
and raises on a name or keyword it does not know, so a typo passes DeepSpeed's config parser and
fails only at launch. The names and keywords come from ds_signatures (data checked against the real
classes by tests/test_ds_signatures.py); tests/test_validate_ds_proof.py shows DeepSpeed refusing each fixture.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from .ds_signatures import (ADAM_CONFIG_KEYS, DEEPSPEED_OPTIMIZERS, OPTIMIZER_KWARGS, PASSED_BY_DEEPSPEED,
                            POSITIVE_WARMUP, SCHEDULER_KWARGS, SCHEDULERS_NEEDING_OBJECTS, TORCH_OPTIM, scheduler_paths,
                            short, torch_optimizers)
from .problems import Context, Problem



def _cpu_optimizer(cfg: dict[str, Any]) -> bool:
    """offload_optimizer cpu / nvme: DeepSpeed swaps in its CPU optimizer classes (engine.zero_use_cpu_optimizer)."""
    z = cfg.get("zero_optimization")
    oo = z.get("offload_optimizer") if isinstance(z, dict) else None
    return isinstance(oo, dict) and oo.get("device") in ("cpu", "nvme")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _block(cfg: dict[str, Any], key: str) -> tuple[Any, dict[str, Any]]:
    """(type, params) of the optimizer / scheduler block; params {} when absent or not an object."""
    block = cfg.get(key)
    if not isinstance(block, dict):
        return None, {}
    params = block.get("params")
    return block.get("type"), params if isinstance(params, dict) else {}


def _close(name: str, names: list[str]) -> str:
    same = [n for n in names if n.lower() == name.lower()]
    close = same or difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f"; did you mean '{close[0]}'?" if close else ""


def rule_optimizer_type(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """deepspeed.initialize asserts the type is one of its own optimizers (any case) or a torch.optim class
    (exact case)."""
    kind, _ = _block(cfg, "optimizer")
    if (not isinstance(kind, str) or kind == "auto" or kind.lower() in DEEPSPEED_OPTIMIZERS
            or kind in torch_optimizers()):
        return []
    names = list(DEEPSPEED_OPTIMIZERS.values()) + sorted(torch_optimizers())
    return [Problem("$.optimizer.type",
                    f"optimizer '{kind}' is not one DeepSpeed knows (deepspeed.initialize: 'not a supported "
                    f"DeepSpeed Optimizer'); use one of DeepSpeed's {', '.join(DEEPSPEED_OPTIMIZERS.values())} (any "
                    f"case) or a torch.optim class, exact case (SGD, RMSprop, ...){_close(kind, names)}",
                    "optimizer_type")]


def _optimizer_class(kind: str, params: dict[str, Any], cpu: bool) -> tuple[str, frozenset[str]] | None:
    """(class, keyword arguments it takes) for what engine._configure_basic_optimizer builds; None where not
    checked (mup's MuAdam/MuAdamW/MuSGD, Muon's own param groups, unknown types)."""
    low = kind.lower()
    if low in ("adam", "adamw"):
        if params.get("torch_adam") is True:
            path = TORCH_OPTIM + ("AdamW" if low == "adamw" or params.get("adam_w_mode", True) else "Adam")
        else:
            path = "deepspeed.ops.adam." + ("DeepSpeedCPUAdam" if cpu else "FusedAdam")
        return path, (frozenset(OPTIMIZER_KWARGS[path]) | ADAM_CONFIG_KEYS) - PASSED_BY_DEEPSPEED.get(path, frozenset())
    own = {"adagrad": ("deepspeed.ops.adagrad.DeepSpeedCPUAdagrad", TORCH_OPTIM + "Adagrad"),
           "lion": ("deepspeed.ops.lion.DeepSpeedCPULion", "deepspeed.ops.lion.FusedLion"),
           "lamb": ("deepspeed.ops.lamb.FusedLamb", "deepspeed.ops.lamb.FusedLamb")}
    path = (own[low][0 if cpu else 1] if low in own
            else None if low in DEEPSPEED_OPTIMIZERS else torch_optimizers().get(kind))
    return (path, frozenset(OPTIMIZER_KWARGS[path])) if path else None


def rule_optimizer_params(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """Every params key is a keyword argument of the optimizer class: deepspeed.initialize raises TypeError
    on an unknown one (a typo such as weight_decy) and ValueError on max_grad_norm."""
    kind, params = _block(cfg, "optimizer")
    found = _optimizer_class(kind, params, _cpu_optimizer(cfg)) if isinstance(kind, str) else None
    out = []
    if "max_grad_norm" in params:
        out.append(Problem("$.optimizer.params.max_grad_norm",
                           "max_grad_norm: deepspeed.initialize refuses it as an optimizer "
                           "param (ValueError); set the top-level gradient_clipping instead", "optimizer_params"))
    if found is None:
        return out
    path, allowed = found
    for key in sorted(set(params) - allowed - {"max_grad_norm"}):
        out.append(Problem(f"$.optimizer.params.{key}", f"'{key}' is not an argument of {short(path)} (what DeepSpeed "
                           f"builds for '{kind}' here), so deepspeed.initialize raises TypeError; accepted: "
                           f"{', '.join(sorted(allowed))}{_close(key, sorted(allowed))}", "optimizer_params"))
    return out


def rule_betas(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """Adam-family optimizers unpack betas into (beta1, beta2) at the first step; bias correction divides by
    1 - beta^t."""
    betas = _block(cfg, "optimizer")[1].get("betas")
    if betas is None or betas == "auto" or (isinstance(betas, list) and "auto" in betas):
        return []  # rule_auto explains "auto"
    if isinstance(betas, list) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas):
        return []
    return [Problem("$.optimizer.params.betas", f"betas {json.dumps(betas)} must be two numbers in [0, 1), e.g. [0.9, "
                    "0.95]: DeepSpeed accepts the config and fails at the first optimizer step", "betas")]


def rule_scheduler_type(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """DeepSpeed looks the type up in its lr_schedules module, then torch.optim.lr_scheduler, both case-sensitive."""
    kind, _ = _block(cfg, "scheduler")
    if not isinstance(kind, str) or kind == "auto" or kind in scheduler_paths():
        return []
    if kind in SCHEDULERS_NEEDING_OBJECTS:
        return [Problem("$.scheduler.type", f"scheduler '{kind}' takes Python objects (functions or other schedulers) "
                        "that a JSON config cannot hold; build it in your script and pass lr_scheduler= to "
                        "deepspeed.initialize",
                        "scheduler_type")]
    own = [short(p) for p in SCHEDULER_KWARGS if not p.startswith("torch.")]
    return [Problem("$.scheduler.type",
                    f"scheduler '{kind}' is not one DeepSpeed knows (deepspeed.initialize: 'does not "
                    f"recognize LR scheduler'); use one of DeepSpeed's {', '.join(own)} or a torch.optim.lr_scheduler "
                    f"class, exact case{_close(kind, sorted(scheduler_paths()))}", "scheduler_type")]


def rule_scheduler_params(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """The scheduler is built as Type(optimizer, **params): unknown or missing arguments are a TypeError in
    deepspeed.initialize; DeepSpeed's warmup schedulers also raise on warmup_num_steps < 1."""
    kind, params = _block(cfg, "scheduler")
    path = scheduler_paths().get(kind) if isinstance(kind, str) else None
    if path is None:
        return []
    required, optional = SCHEDULER_KWARGS[path]
    allowed = sorted(required + optional)
    out = [Problem(f"$.scheduler.params.{key}", f"'{key}' is not an argument of {kind}, so deepspeed.initialize raises "
                   f"TypeError; accepted: {', '.join(allowed)}{_close(key, allowed)}", "scheduler_params")
           for key in sorted(set(params) - set(allowed))]
    out += [Problem("$.scheduler.params", f"{kind} needs '{key}' (deepspeed.initialize raises TypeError without it)",
                    "scheduler_params") for key in required if key not in params]
    steps = params.get("warmup_num_steps")
    if kind in POSITIVE_WARMUP and steps is not None and steps != "auto" and not (type(steps) is int and steps >= 1):
        out.append(Problem("$.scheduler.params.warmup_num_steps", f"warmup_num_steps {json.dumps(steps)} must be an "
                           f"integer >= 1: {kind} raises ValueError on anything else", "scheduler_params"))
    return out
