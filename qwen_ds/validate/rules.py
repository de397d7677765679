"""Semantic rules: what DeepSpeed 0.19.x accepts silently, fails on late, or cannot know.

Each rule is a function (cfg, ctx) -> list[Problem]; RULES lists them all and every one has a
fixture in tests/test_validate_rules.py that trips it. Facts: reference/deepspeed.md §1, §2, §8.
The optimizer / scheduler rules live in optim_rules.py; tests/test_validate_ds_proof.py runs real
deepspeed.initialize on a fixture for each of those and for the NaN and clipping rules here.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterator

from ..knobs import deepspeed_batch_ranks
from ..sharding import autotp_unsupported
from .optim_rules import (rule_betas, rule_optimizer_params, rule_optimizer_type, rule_scheduler_params,
                          rule_scheduler_type)
from .leaf_rules import rule_leaf_modules
from .problems import Context, Problem, json_path

# 0.19.7 / 0.19.8 reject these keys (runtime/config.py _REMOVED_*_CONFIG_KEYS, reference §1.10)
REMOVED_TOP_LEVEL = {
    "nebula": "0.19.7", "compression_training": "0.19.7", "quantize_training": "0.19.7", "sparse_attention": "0.19.7",
    "amp": "0.19.8", "sparse_gradients": "0.19.8", "eigenvalue": "0.19.8", "elasticity": "0.19.8",
    "graph_harvesting": "0.19.8", "curriculum_learning": "0.19.8", "progressive_layer_drop": "0.19.8",
}
REMOVED_ZERO = {"mics_shard_size": "0.19.7", "mics_hierarchical_params_gather": "0.19.7", "zeropp_loco_param": "0.19.8"}
INFERENCE_KEYS = {"tensor_parallel", "tp", "dtype", "replace_with_kernel_inject", "kernel_inject", "enable_cuda_graph",
                  "max_out_tokens", "max_tokens", "min_out_tokens", "min_tokens", "injection_policy", "injection_dict",
                  "mp_size", "keep_module_on_host", "quant", "checkpoint", "base_dir", "save_mp_checkpoint_path",
                  "triangular_masking", "tm", "return_tuple", "training_mp_size", "use_triton", "triton_autotune",
                  "moe", "zero", "checkpoint_config", "set_empty_params", "transposed_mode", "ep_size",
                  "replace_method", "use_cuda_events", "injection_policy_tuple", "config"}
# CPU optimizers DeepSpeed swaps in under offload_optimizer (ops/adam, adagrad, lion)
OFFLOAD_OPTIMIZERS = {"adam", "adamw", "adagrad", "lion"}


def is_inference_config(cfg: dict[str, Any]) -> bool:
    """deepspeed.init_inference configs have tp_size / dtype / kernel injection and no batch keys."""
    tp = cfg.get("tensor_parallel")
    has_tp_size = isinstance(tp, dict) and ("tp_size" in tp)
    train_keys = {"train_batch_size", "train_micro_batch_size_per_gpu", "optimizer", "zero_optimization"}
    return (has_tp_size or "replace_with_kernel_inject" in cfg or "dtype" in cfg) and not (train_keys & cfg.keys())


def _walk(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, path + (i,))


def _zero(cfg: dict[str, Any]) -> dict[str, Any]:
    z = cfg.get("zero_optimization")
    return z if isinstance(z, dict) else {}


def _stage(cfg: dict[str, Any]) -> int | None:
    s = _zero(cfg).get("stage", 0)
    return s if isinstance(s, int) and not isinstance(s, bool) else None


def _enabled(cfg: dict[str, Any], key: str) -> bool:
    block = cfg.get(key)
    return isinstance(block, dict) and block.get("enabled") is True


def _auto_hint(path: tuple, ctx: Context) -> str:
    key = path[-1] if path else ""
    if key == "enabled":
        return " (true or false)"
    h = ctx.model.hidden_size if ctx.model else None
    if h and key == "reduce_bucket_size":
        return f" (for {ctx.model.name}: h*h = {h * h})"
    if h and key in ("stage3_prefetch_bucket_size", "prefetch_bucket_size"):
        return f" (for {ctx.model.name}: int(0.9*h*h) = {int(0.9 * h * h)})"
    if h and key in ("stage3_param_persistence_threshold", "param_persistence_threshold"):
        return f" (for {ctx.model.name}: 10*h = {10 * h})"
    return ""


def rule_auto(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """"auto" is an HF Trainer / Accelerate placeholder: DeepSpeed drops it inside blocks (the
    default silently wins: bf16 off, offload none) and crashes on it at the top level. validate
    fills the keys the HF Trainer fills before the rules run; an "auto" left is one nothing fills."""
    from ..consumers import HF_FILLED

    out = []
    for path, value in _walk(cfg):
        if value == "auto":
            top = len(path) == 1
            effect = ("DeepSpeed crashes on it at the top level" if top
                      else "DeepSpeed silently drops it and uses its default")
            dotted = ".".join(map(str, path))
            if dotted in HF_FILLED:
                why = '"auto" is filled only by the HF Trainer / Accelerate'
            else:
                stage3 = f"zero_optimization.stage3_{path[-1]}" if path[:1] == ("zero_optimization",) else None
                also = f" (it fills {stage3})" if stage3 in HF_FILLED else ""
                why = f'"auto" here is filled by nothing: the HF Trainer does not fill {dotted}{also}'
            out.append(Problem(json_path(path), f"{why}; {effect}; "
                               f"write the value{_auto_hint(path, ctx)} or let qwen-ds gen-config compute it", "auto"))
    return out


def _int(cfg: dict[str, Any], key: str) -> int | None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        return None
    return int(v)


def rule_batch(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """train_batch_size = micro x grad_accum x data-parallel size, DeepSpeed's _batch_assertion;
    DP = world / (tp x pp). Two of the three suffice: DeepSpeed derives the third by floor division."""
    if is_inference_config(cfg):
        return []
    tbs, mbs, ga = (_int(cfg, "train_batch_size"), _int(cfg, "train_micro_batch_size_per_gpu"),
                    _int(cfg, "gradient_accumulation_steps"))
    out = []
    for key, v in (("train_batch_size", tbs), ("train_micro_batch_size_per_gpu", mbs),
                   ("gradient_accumulation_steps", ga)):
        if v is not None and v <= 0:
            out.append(Problem(f"$.{key}", f"{key} = {v} must be > 0", "batch"))
    if out:
        return out
    if tbs is None and mbs is None:
        if "train_batch_size" not in cfg and "train_micro_batch_size_per_gpu" not in cfg:
            return [Problem("$", "neither train_batch_size nor train_micro_batch_size_per_gpu is set; DeepSpeed needs "
                            "one of them", "batch")]
        return []
    if ctx.world_size is None:
        if None not in (tbs, mbs, ga) and tbs % (mbs * ga):
            return [Problem("$.train_batch_size",
                            f"train_batch_size {tbs} is not a multiple of micro {mbs} x grad_accum {ga}", "batch")]
        return []
    tpb = cfg.get("tensor_parallel")
    tp = tpb.get("autotp_size", 1) if isinstance(tpb, dict) else 1
    tp = tp if isinstance(tp, int) and not isinstance(tp, bool) and tp >= 1 else 1
    if ctx.world_size % (tp * ctx.pp):
        return [Problem("$.tensor_parallel.autotp_size",
                        f"tp {tp} x pp {ctx.pp} does not divide the {ctx.world_size} GPUs", "batch")]
    sp = cfg.get("sequence_parallel_size", 1)
    sp = sp if isinstance(sp, int) and not isinstance(sp, bool) and sp >= 1 else 1
    if ctx.world_size % (sp * ctx.pp):
        return [Problem("$.sequence_parallel_size", f"sequence_parallel_size {sp} x pp {ctx.pp} does not divide the "
                        f"{ctx.world_size} GPUs", "batch")]
    dp = deepspeed_batch_ranks(ctx.world_size, ctx.pp, sp)
    detail = (f"world {ctx.world_size} / (sequence parallel {sp} x pp {ctx.pp}) = {dp} ranks in DeepSpeed's "
              "batch equation")
    if tbs is not None and mbs is not None and ga is not None:
        if tbs != mbs * ga * dp:
            return [Problem("$.train_batch_size", f"train_batch_size {tbs} != micro {mbs} x grad_accum {ga} x dp {dp} "
                            f"= {mbs * ga * dp} ({detail}); set it to {mbs * ga * dp}", "batch")]
    elif tbs is not None and mbs is not None:
        g = tbs // (mbs * dp)
        if g < 1 or g * mbs * dp != tbs:
            return [Problem("$.train_batch_size", f"train_batch_size {tbs} is not micro {mbs} x dp {dp} x an integer "
                            f"grad_accum ({detail}); use a multiple of {mbs * dp}", "batch")]
    elif tbs is not None and ga is not None:
        m = tbs // (ga * dp)
        if m < 1 or m * ga * dp != tbs:
            return [Problem("$.train_batch_size", f"train_batch_size {tbs} is not grad_accum {ga} x dp {dp} x an "
                            f"integer micro batch ({detail}); use a multiple of {ga * dp}", "batch")]
    return []


def rule_offload_param_stage(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """offload_param is read only by ZeRO-3; below it DeepSpeed silently ignores it."""
    z, stage = _zero(cfg), _stage(cfg)
    op = z.get("offload_param")
    if isinstance(op, dict) and op.get("device", "none") not in ("none", None) and stage is not None and stage < 3:
        return [Problem("$.zero_optimization.offload_param",
                        f"offload_param needs stage 3 (stage is {stage}); DeepSpeed would silently "
                        "keep the params on GPU: set stage 3 or remove offload_param", "offload_param_stage")]
    return []


def rule_nvme_path(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """device nvme without nvme_path passes DeepSpeed's config check and fails at zero.Init."""
    out = []
    for key in ("offload_param", "offload_optimizer"):
        block = _zero(cfg).get(key)
        if isinstance(block, dict) and block.get("device") == "nvme" and not block.get("nvme_path"):
            out.append(Problem(f"$.zero_optimization.{key}.nvme_path",
                               f'{key}.device "nvme" needs nvme_path (a directory on a local '
                               "NVMe drive of every node); DeepSpeed only fails later, in zero.Init", "nvme_path"))
    return out


def rule_pipeline_stage(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """DeepSpeed's pipeline engine asserts ZeRO stage < 2."""
    stage = _stage(cfg)
    if stage is not None and stage >= 2 and (ctx.pp > 1 or isinstance(cfg.get("pipeline"), dict)):
        why = f"--pp {ctx.pp}" if ctx.pp > 1 else "a pipeline block"
        return [Problem("$.zero_optimization.stage", f"stage {stage} with {why}: DeepSpeed's pipeline engine allows "
                        "only ZeRO 0 or 1; use stage 1 or drop pipeline parallelism", "pipeline_stage")]
    return []


def rule_pipeline_stages(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """pipeline.stages (what a training script reads for PipelineModule num_stages) against --pp / the plan."""
    block = cfg.get("pipeline")
    stages = block.get("stages") if isinstance(block, dict) else None
    if ctx.pp > 1 and isinstance(stages, int) and not isinstance(stages, bool) and stages != ctx.pp:
        return [Problem("$.pipeline.stages", f"pipeline.stages {stages} but the plan has {ctx.pp} pipeline stages "
                        f"(--pp {ctx.pp}); set stages to {ctx.pp} or regenerate the config", "pipeline_stages")]
    return []


def rule_hpz(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """ZeRO++ hpZ: the world size must be divisible by zero_hpz_partition_size (utils/groups.py)."""
    z = _zero(cfg)
    hpz = z.get("zero_hpz_partition_size")
    out = []
    if isinstance(hpz, int) and hpz > 1:
        if _stage(cfg) != 3:
            out.append(Problem("$.zero_optimization.zero_hpz_partition_size",
                               "hpZ (zero_hpz_partition_size > 1) needs stage 3", "hpz"))
        if ctx.world_size and ctx.world_size % hpz:
            out.append(Problem("$.zero_optimization.zero_hpz_partition_size", f"zero_hpz_partition_size {hpz} does not "
                               f"divide the {ctx.world_size} GPUs; use a divisor, usually the GPUs per node", "hpz"))
        elif ctx.gpus_per_node and hpz > ctx.gpus_per_node:
            out.append(Problem("$.zero_optimization.zero_hpz_partition_size", f"zero_hpz_partition_size {hpz} spans "
                               f"nodes ({ctx.gpus_per_node} GPUs per node): the secondary copy is meant to stay inside "
                               "a node", "hpz", "warning"))
    return out


def rule_precision_hw(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """bf16 needs compute capability >= 8.0; DeepSpeed's own check usually passes on V100 anyway."""
    gpu = ctx.gpu
    if gpu is None:
        return []
    bf16 = _enabled(cfg, "bf16") or _enabled(cfg, "bfloat16") or cfg.get("dtype") in ("bf16", "bfloat16")
    if bf16 and not gpu.bf16:
        path = ("$.dtype" if cfg.get("dtype") in ("bf16", "bfloat16")
                else "$.bfloat16.enabled" if _enabled(cfg, "bfloat16") else "$.bf16.enabled")
        return [Problem(path, f"bf16 on {gpu.name} (compute capability {gpu.compute_capability} < 8.0): no bf16 tensor "
                        "cores; use fp16 with dynamic loss scaling", "precision_hw")]
    return []


def rule_fp16_and_bf16(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    if _enabled(cfg, "fp16") and (_enabled(cfg, "bf16") or _enabled(cfg, "bfloat16")):
        return [Problem("$.fp16.enabled", "fp16 and bf16 are both enabled; DeepSpeed asserts on this: keep one",
                        "fp16_and_bf16")]
    return []


def rule_loss_scale(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """Dynamic loss scaling (loss_scale 0) needs loss_scale_window > 0 and min_loss_scale > 0."""
    fp16 = cfg.get("fp16")
    if not _enabled(cfg, "fp16") or not isinstance(fp16, dict) or fp16.get("loss_scale", 0) != 0:
        return []
    out = []
    for key in ("loss_scale_window", "min_loss_scale"):
        v = fp16.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            out.append(Problem(f"$.fp16.{key}", f"{key} = {v} must be > 0 with dynamic loss scaling (loss_scale 0)",
                               "loss_scale"))
    return out


def rule_removed_keys(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    out = [Problem(f"$.{k}", f"'{k}' was removed in DeepSpeed {v}, which now refuses the config; delete it", "removed")
           for k, v in REMOVED_TOP_LEVEL.items() if k in cfg]
    z = _zero(cfg)
    out += [Problem(f"$.zero_optimization.{k}",
                    f"'{k}' was removed in DeepSpeed {v}, which now refuses the config; delete it", "removed")
            for k, v in REMOVED_ZERO.items() if k in z]
    return out


def rule_unknown_top_level(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """DeepSpeed ignores unknown top-level keys silently: a typo means the default is used. A warning
    (naming the key it is close to): DeepSpeed runs such configs, and tools keep keys of their own there."""
    if not ctx.known_top_level:
        return []
    known = INFERENCE_KEYS if is_inference_config(cfg) else ctx.known_top_level
    out = []
    for key in cfg:
        if key in known or key in REMOVED_TOP_LEVEL:
            continue
        if key.startswith("_"):  # a comment by convention ("_comment"): ignored, and meant to be
            out.append(Problem(f"$.{key}", f"'{key}' is not a DeepSpeed key: DeepSpeed ignores it (a comment)",
                               "unknown_key", "warning"))
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; remove it or check the DeepSpeed docs"
        # a warning: DeepSpeed runs the config (tools keep their own keys there: LLaMA-Factory's
        # sequence_parallel, comms_config); a typo of a real key is named by the hint
        out.append(Problem(f"$.{key}", f"unknown top-level key '{key}': DeepSpeed ignores it silently{hint}",
                           "unknown_key", "warning"))
    return out


def rule_offload_ratio(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    oo = _zero(cfg).get("offload_optimizer")
    ratio = oo.get("ratio") if isinstance(oo, dict) else None
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio < 1 and _stage(cfg) != 3:
        return [Problem("$.zero_optimization.offload_optimizer.ratio",
                        f"partial offload (ratio {ratio} < 1) needs stage 3", "offload_ratio")]
    return []


def rule_compute_grad_norm(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    if _zero(cfg).get("compute_grad_norm") is False and _stage(cfg) not in (1, 2):
        return [Problem("$.zero_optimization.compute_grad_norm",
                        "compute_grad_norm false is allowed only with stage 1 or 2", "compute_grad_norm")]
    return []


def rule_offload_optimizer_type(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """offload_optimizer swaps in DeepSpeed's CPU optimizer: only Adam/AdamW/Adagrad/Lion have one."""
    oo = _zero(cfg).get("offload_optimizer")
    opt = cfg.get("optimizer")
    if not (isinstance(oo, dict) and oo.get("device") in ("cpu", "nvme") and isinstance(opt, dict)):
        return []
    kind = str(opt.get("type", "")).lower()
    if kind and kind not in OFFLOAD_OPTIMIZERS:
        return [Problem("$.optimizer.type", f"optimizer '{opt.get('type')}' has no DeepSpeed CPU implementation for "
                        "offload_optimizer; use AdamW (DeepSpeedCPUAdam), Adagrad or Lion", "offload_optimizer_type")]
    return []


def rule_zeropp_stage(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    z = _zero(cfg)
    if ((z.get("zero_quantized_weights") is True or z.get("zero_quantized_nontrainable_weights") is True)
            and _stage(cfg) != 3):
        return [Problem("$.zero_optimization.zero_quantized_weights", "ZeRO++ quantized weights (qwZ) need stage 3",
                        "zeropp_stage")]
    return []


def rule_autotp_model(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """AutoTP (tensor_parallel.tp_size for inference, autotp_size for training) on a model it cannot split."""
    tpb = cfg.get("tensor_parallel")
    if ctx.model is None or not ctx.model.closed_form or not isinstance(tpb, dict):
        return []
    out = []
    for key, training in (("tp_size", False), ("autotp_size", True)):
        tp = tpb.get(key)
        why = autotp_unsupported(ctx.model, training=training)
        if why and isinstance(tp, int) and not isinstance(tp, bool) and tp > 1:
            out.append(Problem(f"$.tensor_parallel.{key}", f"{key} {tp} with {ctx.model.name}: {why}", "autotp_model"))
    return out


def _json_literal(value: float) -> str:
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def rule_non_finite(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """Python's json (and so DeepSpeed's loader) reads NaN / Infinity; DeepSpeed then trains on them: a
    NaN lr turns every weight NaN (the warmup schedulers' first lr is warmup_min_lr, so at step 2),
    a NaN gradient_clipping turns clipping off (NaN > 0 is false)."""
    return [Problem(json_path(path),
                    f"{_json_literal(v)} is not a number DeepSpeed can use: it reads it without complaint and "
                    "trains on it (a NaN lr turns every weight NaN within two steps); write a finite value",
                    "non_finite")
            for path, v in _walk(cfg) if isinstance(v, float) and not math.isfinite(v)]


def rule_gradient_clipping(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """DeepSpeed clips only when gradient_clipping > 0: a negative value silently means no clipping."""
    v = cfg.get("gradient_clipping")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
        return [Problem("$.gradient_clipping", f"gradient_clipping {v} < 0: DeepSpeed does not refuse it but silently "
                        "turns clipping off (it clips only when > 0); write 0 for no clipping or a positive max norm",
                        "gradient_clipping")]
    return []


RULES: tuple[Callable[[dict[str, Any], Context], list[Problem]], ...] = (
    rule_auto, rule_batch, rule_offload_param_stage, rule_nvme_path, rule_pipeline_stage, rule_pipeline_stages,
    rule_hpz,
    rule_precision_hw, rule_fp16_and_bf16, rule_loss_scale, rule_removed_keys, rule_unknown_top_level,
    rule_offload_ratio, rule_compute_grad_norm, rule_offload_optimizer_type, rule_zeropp_stage, rule_autotp_model,
    rule_non_finite, rule_gradient_clipping, rule_optimizer_type, rule_optimizer_params, rule_betas,
    rule_scheduler_type, rule_scheduler_params, rule_leaf_modules,
)


def run_rules(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    out: list[Problem] = []
    for rule in RULES:
        out.extend(rule(cfg, ctx))
    return out
