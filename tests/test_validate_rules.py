"""Every semantic rule in qwen_ds.validate.rules.RULES: a fixture that trips it (JSON path + message
substring) and a near-miss that does not; LLaMA-Factory / axolotl configs users copy; hjson input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from qwen_ds.errors import InputError
from qwen_ds.hardware import get_gpu
from qwen_ds.models import load_model
from qwen_ds.validate import Context, is_inference_config, validate_config
from qwen_ds.validate.parse import parse_config_text, read_config
from qwen_ds.validate.rules import RULES
from qwen_ds.validate.schema import known_top_level_keys

from helpers import walk

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RULE_FUNCS = {f.__name__: f for f in RULES}

#: a valid batch for 16 GPUs (2 nodes x 8)
B = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
W16 = {"world_size": 16, "gpus_per_node": 8}


def cfg(**kw: Any) -> dict[str, Any]:
    out = dict(B)
    out.update(kw)
    return out


def zero(**kw: Any) -> dict[str, Any]:
    return cfg(zero_optimization=kw)


def adamw(**params: Any) -> dict[str, Any]:
    base = {"lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}
    return {"type": "AdamW", "params": {**base, **params}}


def warmup_decay(**params: Any) -> dict[str, Any]:
    p = {"warmup_min_lr": 0, "warmup_max_lr": 1e-4, "warmup_num_steps": 10, "total_num_steps": 100, **params}
    if "warmup_num_step" in params:
        del p["warmup_num_steps"]  # the typo replaces the key
    return {"type": "WarmupDecayLR", "params": p}


class Trip(NamedTuple):
    rule: str  # function name in RULES
    rule_id: str  # Problem.rule
    config: dict
    ctx: dict
    path: str
    substring: str
    severity: str = "error"


class Near(NamedTuple):
    rule: str
    rule_id: str
    config: dict
    ctx: dict
    ds_world: int | None = 16  # world size DeepSpeed's own parser sees (None: skip that check)


def make_ctx(spec: dict) -> Context:
    spec = dict(spec)
    if "gpu" in spec:
        spec["gpu"] = get_gpu(spec["gpu"])
    if "model" in spec:
        spec["model"] = load_model(spec["model"])
    return Context(**spec)


TRIPS = [
    # --- auto
    Trip("rule_auto", "auto", {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 1}, W16, "$.train_batch_size",
         "DeepSpeed crashes on it at the top level"),
    Trip("rule_auto", "auto", cfg(bf16={"enabled": "auto"}), W16, "$.bf16.enabled", "silently drops it"),
    Trip("rule_auto", "auto", cfg(optimizer={"type": "AdamW", "params": {"lr": 1e-5, "betas": ["auto", 0.95]}}), W16,
         "$.optimizer.params.betas[0]", '"auto" here is filled by nothing: the HF Trainer does not fill'),
    Trip("rule_auto", "auto", zero(stage=3, stage3_prefetch_bucket_size="auto"), {**W16, "model": "Qwen3-8B"},
         "$.zero_optimization.stage3_prefetch_bucket_size", "int(0.9*h*h) = 15099494"),
    # --- batch
    Trip("rule_batch", "batch", cfg(train_batch_size=24), W16, "$.train_batch_size", "train_batch_size 24 != micro 1 x grad_accum 1 x dp 16"),
    Trip("rule_batch", "batch", cfg(train_batch_size=0), W16, "$.train_batch_size", "must be > 0"),
    Trip("rule_batch", "batch", {"gradient_accumulation_steps": 1}, W16, "$", "neither train_batch_size nor train_micro_batch_size_per_gpu"),
    Trip("rule_batch", "batch", {"train_batch_size": 24, "train_micro_batch_size_per_gpu": 1}, W16, "$.train_batch_size",
         "use a multiple of 16"),
    Trip("rule_batch", "batch", {"train_batch_size": 24, "gradient_accumulation_steps": 1}, W16, "$.train_batch_size",
         "x an integer micro batch"),
    Trip("rule_batch", "batch", {"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1}, {},
         "$.train_batch_size", "not a multiple of micro 4 x grad_accum 1"),
    Trip("rule_batch", "batch", {"train_micro_batch_size_per_gpu": 1, "tensor_parallel": {"autotp_size": 3}}, W16,
         "$.tensor_parallel.autotp_size", "tp 3 x pp 1 does not divide the 16 GPUs"),
    # --- offload_param below stage 3
    Trip("rule_offload_param_stage", "offload_param_stage", zero(stage=2, offload_param={"device": "cpu"}), W16,
         "$.zero_optimization.offload_param", "offload_param needs stage 3 (stage is 2)"),
    # --- nvme without a path
    Trip("rule_nvme_path", "nvme_path", zero(stage=3, offload_param={"device": "nvme"}), W16,
         "$.zero_optimization.offload_param.nvme_path", 'offload_param.device "nvme" needs nvme_path'),
    Trip("rule_nvme_path", "nvme_path", zero(stage=2, offload_optimizer={"device": "nvme", "nvme_path": ""}), W16,
         "$.zero_optimization.offload_optimizer.nvme_path", 'offload_optimizer.device "nvme" needs nvme_path'),
    # --- pipeline needs stage 0/1
    Trip("rule_pipeline_stage", "pipeline_stage", cfg(train_batch_size=8, zero_optimization={"stage": 2}), {**W16, "pp": 2},
         "$.zero_optimization.stage", "stage 2 with --pp 2"),
    Trip("rule_pipeline_stage", "pipeline_stage", zero(stage=3) | {"pipeline": {"pipe_partitioned": True}}, W16,
         "$.zero_optimization.stage", "stage 3 with a pipeline block"),
    Trip("rule_pipeline_stages", "pipeline_stages", cfg(train_batch_size=8, zero_optimization={"stage": 1},
                                                        pipeline={"stages": 4}), {**W16, "pp": 2},
         "$.pipeline.stages", "pipeline.stages 4 but the plan has 2 pipeline stages"),
    # --- hpZ
    Trip("rule_hpz", "hpz", zero(stage=2, zero_hpz_partition_size=8), W16, "$.zero_optimization.zero_hpz_partition_size", "needs stage 3"),
    Trip("rule_hpz", "hpz", zero(stage=3, zero_hpz_partition_size=3), W16, "$.zero_optimization.zero_hpz_partition_size",
         "zero_hpz_partition_size 3 does not divide the 16 GPUs"),
    Trip("rule_hpz", "hpz", zero(stage=3, zero_hpz_partition_size=16), W16, "$.zero_optimization.zero_hpz_partition_size",
         "spans nodes (8 GPUs per node)", "warning"),
    # --- bf16 on a GPU without it
    Trip("rule_precision_hw", "precision_hw", cfg(bf16={"enabled": True}), {**W16, "gpu": "V100-32GB"}, "$.bf16.enabled",
         "bf16 on V100-32GB (compute capability 7.0 < 8.0)"),
    # --- fp16 and bf16
    Trip("rule_fp16_and_bf16", "fp16_and_bf16", cfg(fp16={"enabled": True}, bf16={"enabled": True}), W16, "$.fp16.enabled",
         "fp16 and bf16 are both enabled"),
    Trip("rule_fp16_and_bf16", "fp16_and_bf16", cfg(fp16={"enabled": True}, bfloat16={"enabled": True}), W16, "$.fp16.enabled",
         "both enabled"),
    # --- dynamic loss scaling
    Trip("rule_loss_scale", "loss_scale", cfg(fp16={"enabled": True, "loss_scale": 0, "loss_scale_window": 0}), W16,
         "$.fp16.loss_scale_window", "loss_scale_window = 0 must be > 0 with dynamic loss scaling"),
    Trip("rule_loss_scale", "loss_scale", cfg(fp16={"enabled": True, "min_loss_scale": -1}), W16, "$.fp16.min_loss_scale",
         "min_loss_scale = -1 must be > 0"),
    # --- removed in 0.19.7 / 0.19.8
    Trip("rule_removed_keys", "removed", cfg(amp={"enabled": True}), W16, "$.amp", "removed in DeepSpeed 0.19.8"),
    Trip("rule_removed_keys", "removed", cfg(nebula={"enabled": False}), W16, "$.nebula", "removed in DeepSpeed 0.19.7"),
    Trip("rule_removed_keys", "removed", cfg(curriculum_learning={"enabled": False}), W16, "$.curriculum_learning", "0.19.8"),
    Trip("rule_removed_keys", "removed", zero(stage=3, mics_shard_size=8), W16, "$.zero_optimization.mics_shard_size",
         "'mics_shard_size' was removed in DeepSpeed 0.19.7"),
    Trip("rule_removed_keys", "removed", zero(stage=3, zeropp_loco_param={"err_beta": 0.8}), W16,
         "$.zero_optimization.zeropp_loco_param", "0.19.8"),
    # --- unknown top-level keys
    Trip("rule_unknown_top_level", "unknown_key", cfg(zero_optimisation={"stage": 3}), W16, "$.zero_optimisation",
         "did you mean 'zero_optimization'?", "warning"),
    Trip("rule_unknown_top_level", "unknown_key", cfg(gradient_acumulation_steps=2), W16, "$.gradient_acumulation_steps",
         "did you mean 'gradient_accumulation_steps'?", "warning"),
    Trip("rule_unknown_top_level", "unknown_key", {"dtype": "bf16", "tensor_parallel": {"tp_size": 2}, "max_new_tokens": 5}, W16,
         "$.max_new_tokens", "unknown top-level key 'max_new_tokens'", "warning"),
    # --- partial offload
    Trip("rule_offload_ratio", "offload_ratio", zero(stage=2, offload_optimizer={"device": "cpu", "ratio": 0.5}), W16,
         "$.zero_optimization.offload_optimizer.ratio", "partial offload (ratio 0.5 < 1) needs stage 3"),
    # --- compute_grad_norm
    Trip("rule_compute_grad_norm", "compute_grad_norm", zero(stage=3, compute_grad_norm=False), W16,
         "$.zero_optimization.compute_grad_norm", "only with stage 1 or 2"),
    # --- offload needs a DeepSpeed CPU optimizer
    Trip("rule_offload_optimizer_type", "offload_optimizer_type",
         zero(stage=2, offload_optimizer={"device": "cpu"}) | {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}}, W16,
         "$.optimizer.type", "optimizer 'SGD' has no DeepSpeed CPU implementation"),
    # --- ZeRO++ qwZ
    Trip("rule_zeropp_stage", "zeropp_stage", zero(stage=2, zero_quantized_weights=True), W16,
         "$.zero_optimization.zero_quantized_weights", "quantized weights (qwZ) need stage 3"),
    Trip("rule_zeropp_stage", "zeropp_stage", zero(stage=1, zero_quantized_nontrainable_weights=True), W16,
         "$.zero_optimization.zero_quantized_weights", "need stage 3"),
    # --- AutoTP on a model it cannot split
    Trip("rule_leaf_modules", "leaf_modules", zero(stage=3), {**W16, "model": "Qwen3-Next-80B-A3B"},
         "$.zero_optimization.leaf_module", '"leaf_module": {"classes": ["Qwen3NextSparseMoeBlock"]}', "warning"),
    Trip("rule_autotp_model", "autotp_model", cfg(tensor_parallel={"autotp_size": 2}), {**W16, "model": "Qwen3-Next-80B-A3B"},
         "$.tensor_parallel.autotp_size", "refuses the HuggingFace tp_plan of qwen3_next"),
    Trip("rule_autotp_model", "autotp_model", cfg(tensor_parallel={"autotp_size": 2}), {**W16, "model": "Qwen3-30B-A3B"},
         "$.tensor_parallel.autotp_size", "'packed_colwise' / 'moe_tp_experts'"),
    Trip("rule_autotp_model", "autotp_model", {"tensor_parallel": {"tp_size": 4}, "dtype": "bf16"},
         {"world_size": 4, "gpus_per_node": 4, "model": "Qwen3-Next-80B-A3B"}, "$.tensor_parallel.tp_size", "--tp 1 with --zero 3"),
    # --- NaN / Infinity (Python's json reads them, DeepSpeed trains on them)
    Trip("rule_non_finite", "non_finite", cfg(optimizer=adamw(lr=float("nan"))), W16, "$.optimizer.params.lr", "NaN is not a number"),
    Trip("rule_non_finite", "non_finite", cfg(gradient_clipping=float("-inf")), W16, "$.gradient_clipping", "-Infinity is not"),
    # --- negative clipping = no clipping
    Trip("rule_gradient_clipping", "gradient_clipping", cfg(gradient_clipping=-1.0), W16, "$.gradient_clipping",
         "silently turns clipping off"),
    # --- optimizer type / params / betas
    Trip("rule_optimizer_type", "optimizer_type", cfg(optimizer={"type": "AdamWW"}), W16, "$.optimizer.type", "did you mean 'AdamW'?"),
    Trip("rule_optimizer_type", "optimizer_type", cfg(optimizer={"type": "sgd"}), W16, "$.optimizer.type", "did you mean 'SGD'?"),
    Trip("rule_optimizer_params", "optimizer_params", cfg(optimizer=adamw(weight_decy=0.1)), W16, "$.optimizer.params.weight_decy",
         "not an argument of FusedAdam"),
    Trip("rule_optimizer_params", "optimizer_params", zero(stage=2, offload_optimizer={"device": "cpu"}) | {"optimizer": adamw(adamw_mode=True)},
         W16, "$.optimizer.params.adamw_mode", "not an argument of DeepSpeedCPUAdam"),  # DeepSpeed passes it itself
    Trip("rule_optimizer_params", "optimizer_params", cfg(optimizer=adamw(max_grad_norm=1.0)), W16, "$.optimizer.params.max_grad_norm",
         "set the top-level gradient_clipping"),
    Trip("rule_optimizer_params", "optimizer_params", cfg(optimizer={"type": "SGD", "params": {"lr": 0.1, "betas": [0.9, 0.99]}}), W16,
         "$.optimizer.params.betas", "not an argument of SGD"),
    Trip("rule_betas", "betas", cfg(optimizer=adamw(betas=[0.9])), W16, "$.optimizer.params.betas", "must be two numbers in [0, 1)"),
    Trip("rule_betas", "betas", cfg(optimizer=adamw(betas=[0.9, 1.0])), W16, "$.optimizer.params.betas", "[0.9, 1.0] must be"),
    # --- scheduler type / params
    Trip("rule_scheduler_type", "scheduler_type", cfg(scheduler={"type": "WarmupDecay"}), W16, "$.scheduler.type",
         "did you mean 'WarmupDecayLR'?"),
    Trip("rule_scheduler_type", "scheduler_type", cfg(scheduler={"type": "LambdaLR"}), W16, "$.scheduler.type", "takes Python objects"),
    Trip("rule_scheduler_params", "scheduler_params", cfg(scheduler=warmup_decay(warmup_num_step=10)), W16,
         "$.scheduler.params.warmup_num_step", "did you mean 'warmup_num_steps'?"),
    Trip("rule_scheduler_params", "scheduler_params", cfg(scheduler={"type": "WarmupDecayLR", "params": {}}), W16, "$.scheduler.params",
         "needs 'total_num_steps'"),
    Trip("rule_scheduler_params", "scheduler_params", cfg(scheduler=warmup_decay(warmup_num_steps=0)), W16,
         "$.scheduler.params.warmup_num_steps", "must be an integer >= 1"),
]

NEARS = [
    Near("rule_auto", "auto", cfg(bf16={"enabled": True}), W16),
    Near("rule_auto", "auto", cfg(wandb={"enabled": False, "project": "auto-tuning"}), W16),  # contains "auto", is not "auto"
    Near("rule_batch", "batch", {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 1}, W16),  # grad_accum 2 derived
    Near("rule_batch", "batch", {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4}, {**W16, "pp": 2},
         ds_world=8),  # dp = 16 / pp 2
    Near("rule_batch", "batch", {"train_micro_batch_size_per_gpu": 3}, W16),
    Near("rule_offload_param_stage", "offload_param_stage", zero(stage=3, offload_param={"device": "cpu"}), W16),
    Near("rule_offload_param_stage", "offload_param_stage", zero(stage=2, offload_param={"device": "none"}), W16),
    Near("rule_nvme_path", "nvme_path", zero(stage=3, offload_param={"device": "nvme", "nvme_path": "/nvme"}), W16),
    Near("rule_pipeline_stage", "pipeline_stage", cfg(train_batch_size=8, zero_optimization={"stage": 1}), {**W16, "pp": 2}, ds_world=8),
    Near("rule_pipeline_stages", "pipeline_stages", cfg(train_batch_size=8, zero_optimization={"stage": 1},
                                                       pipeline={"stages": 2}), {**W16, "pp": 2}, ds_world=8),
    Near("rule_hpz", "hpz", zero(stage=3, zero_hpz_partition_size=8), W16),
    Near("rule_precision_hw", "precision_hw", cfg(fp16={"enabled": True}), {**W16, "gpu": "V100-32GB"}),
    Near("rule_precision_hw", "precision_hw", cfg(bf16={"enabled": True}), {**W16, "gpu": "A100-80GB"}),
    Near("rule_fp16_and_bf16", "fp16_and_bf16", cfg(fp16={"enabled": True}, bf16={"enabled": False}), W16),
    Near("rule_loss_scale", "loss_scale", cfg(fp16={"enabled": True, "loss_scale": 128, "loss_scale_window": 0, "min_loss_scale": 0}), W16),
    Near("rule_loss_scale", "loss_scale", cfg(fp16={"enabled": False, "loss_scale": 0, "loss_scale_window": 0}), W16),
    Near("rule_removed_keys", "removed", cfg(data_efficiency={"enabled": False}), W16),  # the replacement of curriculum_learning
    Near("rule_unknown_top_level", "unknown_key", cfg(wall_clock_breakdown=False, zero_allow_untested_optimizer=True), W16),
    Near("rule_unknown_top_level", "unknown_key", {"dtype": "bf16", "tensor_parallel": {"tp_size": 2}, "max_tokens": 64}, W16),
    Near("rule_offload_ratio", "offload_ratio", zero(stage=3, offload_optimizer={"device": "cpu", "ratio": 0.5}), W16),
    Near("rule_compute_grad_norm", "compute_grad_norm", zero(stage=2, compute_grad_norm=False), W16),
    Near("rule_offload_optimizer_type", "offload_optimizer_type",
         zero(stage=2, offload_optimizer={"device": "cpu"}) | {"optimizer": {"type": "Lion", "params": {"lr": 1e-4}}}, W16),
    Near("rule_offload_optimizer_type", "offload_optimizer_type",
         zero(stage=2) | {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}}, W16),
    Near("rule_zeropp_stage", "zeropp_stage", zero(stage=3, zero_quantized_weights=True), W16),
    Near("rule_leaf_modules", "leaf_modules", zero(stage=3, leaf_module={"classes": ["Qwen3NextSparseMoeBlock"]}),
         {**W16, "model": "Qwen3-Next-80B-A3B"}),
    Near("rule_autotp_model", "autotp_model", cfg(tensor_parallel={"autotp_size": 2}), {**W16, "model": "Qwen3-8B"}),
    Near("rule_non_finite", "non_finite", cfg(optimizer=adamw(lr=1e-30), gradient_clipping=1e30), W16),
    Near("rule_gradient_clipping", "gradient_clipping", cfg(gradient_clipping=0), W16),  # 0 = no clipping, said plainly
    Near("rule_optimizer_type", "optimizer_type", cfg(optimizer={"type": "adamw"}), W16),  # DeepSpeed's names: any case
    Near("rule_optimizer_type", "optimizer_type", cfg(optimizer={"type": "RMSprop"}, zero_allow_untested_optimizer=True), W16),
    Near("rule_optimizer_params", "optimizer_params", cfg(optimizer=adamw(adam_w_mode=True, bias_correction=True)), W16),
    Near("rule_optimizer_params", "optimizer_params", cfg(optimizer=adamw(torch_adam=True, foreach=False, fused=False)), W16),
    Near("rule_optimizer_params", "optimizer_params", cfg(optimizer={"type": "Lion", "params": {"lr": 1e-4, "betas": [0.9, 0.99]}}), W16),
    Near("rule_betas", "betas", cfg(optimizer=adamw(betas=[0, 0.999])), W16),
    Near("rule_scheduler_type", "scheduler_type", cfg(scheduler={"type": "StepLR", "params": {"step_size": 10}}), W16),
    Near("rule_scheduler_params", "scheduler_params", cfg(scheduler=warmup_decay(warmup_num_steps=1)), W16),
]


def _id(case) -> str:
    return f"{case.rule}-{case.path if isinstance(case, Trip) else 'near'}"


def test_every_rule_has_a_trip_and_a_near_miss():
    names = set(RULE_FUNCS)
    assert {t.rule for t in TRIPS} == names
    assert {n.rule for n in NEARS} == names


def _direct(rule: str, config: dict, ctx: Context):
    # validate_config fills known_top_level; do the same when calling a rule on its own
    return RULE_FUNCS[rule](config, dataclasses.replace(ctx, known_top_level=known_top_level_keys()))


@pytest.mark.parametrize("case", TRIPS, ids=[f"{t.rule}-{i}" for i, t in enumerate(TRIPS)])
def test_rule_trips(case: Trip):
    ctx = make_ctx(case.ctx)
    direct = _direct(case.rule, case.config, ctx)
    assert any(p.path == case.path and case.substring in p.message and p.rule == case.rule_id and p.severity == case.severity
               for p in direct), direct
    found = validate_config(case.config, ctx)
    assert any(p.path == case.path and case.substring in p.message and p.rule == case.rule_id and p.severity == case.severity
               for p in found), found


@pytest.mark.parametrize("case", NEARS, ids=[f"{n.rule}-{i}" for i, n in enumerate(NEARS)])
def test_rule_near_miss(case: Near):
    ctx = make_ctx(case.ctx)
    assert _direct(case.rule, case.config, ctx) == []
    found = validate_config(case.config, ctx)
    assert [p for p in found if p.rule == case.rule_id] == []
    assert found == [], found  # the near-miss is a clean config, not merely one this rule ignores


@pytest.mark.parametrize("case", [n for n in NEARS if n.ds_world], ids=lambda n: n.rule)
def test_near_misses_accepted_by_deepspeed(case: Near):
    pytest.importorskip("deepspeed")
    from qwen_ds.validate.dscheck import deepspeed_problems

    assert deepspeed_problems(case.config, case.ds_world, is_inference_config(case.config)) == []


@pytest.mark.parametrize("config,ds_world", [
    (cfg(train_batch_size=24), 16), (cfg(fp16={"enabled": True, "loss_scale_window": 0}), 16),
    (zero(stage=2, offload_optimizer={"device": "cpu", "ratio": 0.5}), 16), (zero(stage=3, compute_grad_norm=False), 16),
    (cfg(amp={"enabled": True}), 16), (zero(stage=3, mics_shard_size=8), 16),
    ({"train_batch_size": "auto", "train_micro_batch_size_per_gpu": 1}, 16),
], ids=["batch", "loss_scale", "offload_ratio", "compute_grad_norm", "removed_amp", "removed_mics", "auto_top_level"])
def test_trips_that_deepspeed_also_refuses(config, ds_world):
    """Where DeepSpeed 0.19.8 has a check of its own, our rule agrees with it (it refuses the same config)."""
    pytest.importorskip("deepspeed")
    from qwen_ds.validate.dscheck import deepspeed_problems

    assert deepspeed_problems(config, ds_world, False), config


def test_all_problems_reported_not_only_the_first():
    config = cfg(fp16={"enabled": True}, bf16={"enabled": True}, zero_optimisation={"stage": 3},
                 zero_optimization={"stage": 2, "offload_param": {"device": "cpu"}})
    rules = {p.rule for p in validate_config(config, make_ctx(W16))}
    assert {"fp16_and_bf16", "unknown_key", "offload_param_stage"} <= rules


def test_problem_as_dict_shape():
    (p, *_) = validate_config(cfg(train_batch_size=24), make_ctx(W16))
    assert set(p.as_dict()) == {"path", "message", "rule", "severity"}


def test_schema_fractional_float_message():
    found = validate_config(zero(stage=3, stage3_prefetch_bucket_size=15099494.4), make_ctx(W16))
    (p,) = [p for p in found if p.path == "$.zero_optimization.stage3_prefetch_bucket_size"]
    assert p.rule == "schema" and "write 15099494" in p.message


# --------------------------------------------------------------------------- known package bugs (strict xfail)


def test_batch_rule_sequence_parallel_false_positive():
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "sequence_parallel_size": 2}
    assert [p for p in validate_config(config, Context(world_size=8)) if p.rule == "batch"] == []


def test_batch_rule_sequence_parallel_false_negative():
    config = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "sequence_parallel_size": 2}
    assert [p for p in validate_config(config, Context(world_size=8)) if p.rule == "batch"]


def test_precision_hw_path_for_inference_dtype():
    found = validate_config({"dtype": "bf16", "tensor_parallel": {"tp_size": 1}}, Context(gpu=get_gpu("V100-32GB")))
    assert [p.path for p in found if p.rule == "precision_hw"] == ["$.dtype"]


# --------------------------------------------------------------------------- configs users copy (LLaMA-Factory, axolotl)

PEER_FIXTURES = ["llamafactory_ds_z0_config.json", "llamafactory_ds_z2_config.json", "llamafactory_ds_z3_config.json",
                 "llamafactory_ds_z3_offload_config.json", "axolotl_zero1.json", "axolotl_zero2.json", "axolotl_zero3_bf16.json"]


@pytest.mark.parametrize("name", PEER_FIXTURES)
def test_peer_config_every_auto_reported(name):
    config = read_config(FIXTURES / name)
    expected = {p for p, v in walk(config) if v == "auto"}
    assert len(expected) >= 4  # the four batch / clipping keys at least
    found = validate_config(config, Context(model=load_model("Qwen3-8B")))
    auto = [p for p in found if p.rule == "auto"]
    assert {p.path for p in auto} == expected
    assert len(auto) == len(expected)  # each once
    assert all(p.severity == "error" for p in auto)
    for p in auto:
        top = p.path.count(".") == 1
        assert ("crashes on it at the top level" in p.message) == top
        assert ("silently drops it" in p.message) == (not top)
    # "auto" is explained by the auto rule, not repeated as schema type errors
    assert not [p for p in found if p.rule == "schema" and p.path in expected]


@pytest.mark.parametrize("name", [n for n in PEER_FIXTURES if "z3" in n or "zero3" in n])
def test_peer_config_bucket_hints_for_qwen3_8b(name):
    found = validate_config(read_config(FIXTURES / name), Context(model=load_model("Qwen3-8B")))
    by_key = {p.path.rsplit(".", 1)[1]: p.message for p in found if p.rule == "auto"}
    assert "h*h = 16777216" in by_key["reduce_bucket_size"]
    prefetch = by_key.get("stage3_prefetch_bucket_size") or by_key["prefetch_bucket_size"]
    persist = by_key.get("stage3_param_persistence_threshold") or by_key["param_persistence_threshold"]
    assert "int(0.9*h*h) = 15099494" in prefetch
    assert "10*h = 40960" in persist


def test_peer_config_hints_need_a_model():
    found = validate_config(read_config(FIXTURES / "llamafactory_ds_z3_config.json"), Context())
    assert not any("h*h" in p.message for p in found)


@pytest.mark.parametrize("name", PEER_FIXTURES)
def test_peer_config_with_autos_filled_is_clean(name):
    """Fill every "auto" the way the HF Trainer would for Qwen3-8B on 16 GPUs: nothing else is wrong with them."""
    h = 4096
    fills = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
             "reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h), "prefetch_bucket_size": int(0.9 * h * h),
             "stage3_param_persistence_threshold": 10 * h, "param_persistence_threshold": 10 * h}

    def fill(node):
        for k, v in list(node.items()):
            if isinstance(v, dict):
                fill(v)
            elif v == "auto" and k != "enabled":
                node[k] = fills[k]

    config = read_config(FIXTURES / name)
    fill(config)
    # the precision switches: bf16 on, fp16 off (what --bf16 gives on an H100)
    config["bf16"]["enabled"] = True
    if "fp16" in config:
        config["fp16"]["enabled"] = False
    ctx = Context(world_size=16, gpus_per_node=8, gpu=get_gpu("H100-SXM"), model=load_model("Qwen3-8B"))
    assert [p for p in validate_config(config, ctx) if p.severity == "error"] == []
    pytest.importorskip("deepspeed")
    from qwen_ds.validate.dscheck import deepspeed_problems

    assert deepspeed_problems(config, 16, False) == []


# --------------------------------------------------------------------------- hjson input


def test_hjson_comments_and_trailing_commas(tmp_path):
    text = """{
  // line comment
  # hash comment
  /* block
     comment */
  "train_micro_batch_size_per_gpu": 1,
  "gradient_accumulation_steps": 2,
  "zero_optimization": {"stage": 3, "reduce_bucket_size": 5e8,},
  "bf16": {"enabled": true,},
}
"""
    path = tmp_path / "ds.hjson"
    path.write_text(text)
    config = read_config(path)
    assert config == {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
                      "zero_optimization": {"stage": 3, "reduce_bucket_size": 500000000}, "bf16": {"enabled": True}}
    assert type(config) is dict and type(config["zero_optimization"]) is dict
    assert type(config["zero_optimization"]["reduce_bucket_size"]) is int
    assert validate_config(config, Context(world_size=8)) == []


@pytest.mark.parametrize("text,dup", [
    ('{"train_batch_size": 8, "train_batch_size": 16}', "train_batch_size"),
    ('{"zero_optimization": {"stage": 1, "stage": 3}}', "stage"),
    ('{\n  // hjson path\n  "bf16": {"enabled": true},\n  "bf16": {"enabled": false},\n}', "bf16"),
])
def test_duplicate_keys_reported(text, dup):
    with pytest.raises(InputError, match=f"duplicate keys {dup}"):
        parse_config_text(text, "ds.json")


@pytest.mark.parametrize("text,line", [
    ('{\n  "train_batch_size": 8,\n  "zero_optimization": {\n    "stage": \n  }\n}\n', 5),
    ('{\n"a": 1,\n"b": [1,2\n\n', 5),
    ('{"a": 1}\n}\n', 2),
])
def test_malformed_input_names_the_line(text, line):
    with pytest.raises(InputError, match=f"ds.json line {line}:"):
        parse_config_text(text, "ds.json")


@pytest.mark.parametrize("text", ["[1, 2]", '"just a string"', "42"])
def test_non_object_refused(text):
    with pytest.raises(InputError, match="a DeepSpeed config is a JSON object"):
        parse_config_text(text, "ds.json")


def test_read_config_errors(tmp_path):
    with pytest.raises(InputError, match="cannot read it"):
        read_config(tmp_path / "missing.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(InputError, match="not UTF-8"):
        read_config(bad)


def test_fixture_files_are_plain_json():
    for name in PEER_FIXTURES:
        json.loads((FIXTURES / name).read_text())
