"""What deepspeed.initialize builds from the "optimizer" and "scheduler" blocks, written as data.

validate must not import torch or deepspeed, so the names and keyword arguments live here;
tests/test_ds_signatures.py compares every entry with inspect.signature of the real class
(DeepSpeed 0.19.8, torch 2.13), so an upgrade that changes one fails a test instead of the rules.
Keys are import paths; values are the keyword arguments after the first (the params / optimizer).
"""

from __future__ import annotations

#: runtime/config.py DEEPSPEED_OPTIMIZERS, matched case-insensitively; the spelling messages show
DEEPSPEED_OPTIMIZERS = {"adagrad": "Adagrad", "adam": "Adam", "adamw": "AdamW", "lamb": "Lamb", "lion": "Lion",
                        "muadam": "MuAdam", "muadamw": "MuAdamW", "musgd": "MuSGD", "muon": "Muon"}

#: every other optimizer type is getattr(torch.optim, type): case-sensitive, torch.optim's Optimizer subclasses
OPTIMIZER_KWARGS: dict[str, tuple[str, ...]] = {
    # the classes engine._configure_basic_optimizer builds for DeepSpeed's own names
    "deepspeed.ops.adam.FusedAdam": ("lr", "bias_correction", "betas", "eps", "adam_w_mode", "weight_decay", "amsgrad",
                                     "set_grad_none"),
    "deepspeed.ops.adam.DeepSpeedCPUAdam": ("lr", "bias_correction", "betas", "eps", "weight_decay", "amsgrad",
                                            "adamw_mode", "fp32_optimizer_states"),
    "deepspeed.ops.adagrad.DeepSpeedCPUAdagrad": ("lr", "eps", "weight_decay", "amsgrad", "fp32_optimizer_states"),
    "deepspeed.ops.lamb.FusedLamb": ("lr", "bias_correction", "betas", "eps", "eps_inside_sqrt", "weight_decay",
                                     "max_grad_norm", "max_coeff", "min_coeff", "amsgrad"),
    "deepspeed.ops.lion.FusedLion": ("lr", "betas", "weight_decay", "set_grad_none"),
    "deepspeed.ops.lion.DeepSpeedCPULion": ("lr", "betas", "weight_decay", "fp32_optimizer_states"),
    # torch 2.13
    "torch.optim.ASGD": ("lr", "lambd", "alpha", "t0", "weight_decay", "foreach", "maximize", "differentiable",
                         "capturable"),
    "torch.optim.Adadelta": ("lr", "rho", "eps", "weight_decay", "foreach", "capturable", "maximize", "differentiable"),
    "torch.optim.Adafactor": ("lr", "beta2_decay", "eps", "d", "weight_decay", "foreach", "maximize"),
    "torch.optim.Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "foreach", "maximize",
                            "differentiable", "fused"),
    "torch.optim.Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "foreach", "maximize", "capturable",
                         "differentiable", "fused", "decoupled_weight_decay"),
    "torch.optim.AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable",
                          "differentiable", "fused"),
    "torch.optim.Adamax": ("lr", "betas", "eps", "weight_decay", "foreach", "maximize", "differentiable", "capturable"),
    "torch.optim.LBFGS": ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
                          "line_search_fn"),
    "torch.optim.Muon": ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps",
                         "adjust_lr_fn"),
    "torch.optim.NAdam": ("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay", "foreach",
                          "maximize", "capturable", "differentiable"),
    "torch.optim.RAdam": ("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "foreach", "maximize",
                          "capturable", "differentiable"),
    "torch.optim.RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "capturable", "foreach",
                            "maximize", "differentiable"),
    "torch.optim.Rprop": ("lr", "etas", "step_sizes", "capturable", "foreach", "maximize", "differentiable"),
    "torch.optim.SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach",
                        "differentiable", "fused"),
    "torch.optim.SparseAdam": ("lr", "betas", "eps", "maximize"),
}
TORCH_OPTIM = "torch.optim."

#: Adam's config keys DeepSpeed takes out of params itself (engine.get_optimizer_configuration)
ADAM_CONFIG_KEYS = frozenset({"adam_w_mode", "torch_adam", "fp32_optimizer_states"})
#: keyword arguments DeepSpeed passes itself: the same key in params is a duplicate argument (TypeError)
PASSED_BY_DEEPSPEED = {"deepspeed.ops.adam.DeepSpeedCPUAdam": frozenset({"adamw_mode"})}

#: scheduler type -> (required, optional) keyword arguments. DeepSpeed looks the name up in
#: runtime/lr_schedules.py (VALID_LR_SCHEDULES), then torch.optim.lr_scheduler; both case-sensitive
SCHEDULER_KWARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "deepspeed.runtime.lr_schedules.LRRangeTest": ((), ("lr_range_test_min_lr", "lr_range_test_step_size",
                                                        "lr_range_test_step_rate", "lr_range_test_staircase",
                                                        "last_batch_iteration")),
    "deepspeed.runtime.lr_schedules.OneCycle": (("cycle_min_lr", "cycle_max_lr"), (
        "decay_lr_rate", "cycle_first_step_size", "cycle_second_step_size", "cycle_first_stair_count",
        "cycle_second_stair_count", "decay_step_size", "cycle_momentum", "cycle_min_mom", "cycle_max_mom",
        "decay_mom_rate", "last_batch_iteration")),
    "deepspeed.runtime.lr_schedules.WarmupLR": ((), ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps",
                                                     "warmup_type", "last_batch_iteration")),
    "deepspeed.runtime.lr_schedules.WarmupDecayLR": (("total_num_steps",), (
        "warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration")),
    "deepspeed.runtime.lr_schedules.WarmupCosineLR": (("total_num_steps",), (
        "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio", "warmup_type", "last_batch_iteration")),
    "torch.optim.lr_scheduler.ConstantLR": ((), ("factor", "total_iters", "last_epoch")),
    "torch.optim.lr_scheduler.CosineAnnealingLR": (("T_max",), ("eta_min", "last_epoch")),
    "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts": (("T_0",), ("T_mult", "eta_min", "last_epoch")),
    "torch.optim.lr_scheduler.CyclicLR": (("base_lr", "max_lr"), (
        "step_size_up", "step_size_down", "mode", "gamma", "scale_fn", "scale_mode", "cycle_momentum", "base_momentum",
        "max_momentum", "last_epoch")),
    "torch.optim.lr_scheduler.ExponentialLR": (("gamma",), ("last_epoch",)),
    "torch.optim.lr_scheduler.LinearLR": ((), ("start_factor", "end_factor", "total_iters", "last_epoch")),
    "torch.optim.lr_scheduler.MultiStepLR": (("milestones",), ("gamma", "last_epoch")),
    "torch.optim.lr_scheduler.OneCycleLR": (("max_lr",), (
        "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
        "max_momentum", "div_factor", "final_div_factor", "three_phase", "last_epoch")),
    "torch.optim.lr_scheduler.PolynomialLR": ((), ("total_iters", "power", "last_epoch")),
    "torch.optim.lr_scheduler.ReduceLROnPlateau": ((), ("mode", "factor", "patience", "threshold", "threshold_mode",
                                                        "cooldown", "min_lr", "eps")),
    "torch.optim.lr_scheduler.StepLR": (("step_size",), ("gamma", "last_epoch")),
}
#: torch schedulers whose arguments are Python objects (functions, other schedulers): not from a JSON file
SCHEDULERS_NEEDING_OBJECTS = ("ChainedScheduler", "LambdaLR", "MultiplicativeLR", "SequentialLR")
#: DeepSpeed schedulers that raise on warmup_num_steps that is not an int >= 1
POSITIVE_WARMUP = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR")


def short(path: str) -> str:
    return path.rsplit(".", 1)[1]


def scheduler_paths() -> dict[str, str]:
    """Type name -> import path; DeepSpeed's own schedulers win over torch's of the same name."""
    out: dict[str, str] = {}
    for path in SCHEDULER_KWARGS:
        out.setdefault(short(path), path)
    return out


def torch_optimizers() -> dict[str, str]:
    return {short(p): p for p in OPTIMIZER_KWARGS if p.startswith(TORCH_OPTIM)}
