"""Rendering: the whole plan matrix is accepted by DeepSpeed 0.19.8's own parser and by validate_config,
plus the unit behaviour of render_context / templates / --set overrides.

The matrix covers ZeRO stage 0-3 x optimizer/param offload none/cpu/nvme (where Plan allows them)
x precision bf16/fp16/fp32/fp8 x PP 1/2 for training, DeepSpeed-Inference (AutoTP) x precision x TP,
and ZeRO-Inference (stage 3, param offload cpu/nvme) x precision.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest

from qwen_ds.errors import InputError
from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.models import load_model
from qwen_ds.knobs import Plan, Workload
from qwen_ds.render import (ConfigOptions, apply_override, default_template_dir, ds_dtype, fp8_recipe, render,
                            render_context, render_text, template_name)
from qwen_ds.validate import Context, is_inference_config, validate_config

from helpers import walk

MODEL = "Qwen3-8B"  # hidden 4096: h*h = 16777216, int(0.9*h*h) = 15099494, 10*h = 40960
NODES, GPN = 2, 8
WORLD = NODES * GPN
NVME = "/local_nvme/ds"

INT_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
            "stage3_max_live_parameters", "stage3_max_reuse_distance", "sub_group_size")


def _train_cases():
    for stage, oo, op, prec, pp in itertools.product(range(4), ("none", "cpu", "nvme"), ("none", "cpu", "nvme"),
                                                    ("bf16", "fp16", "fp32", "fp8"), (1, 2)):
        try:
            Plan(zero_stage=stage, offload_optimizer=oo, offload_param=op, precision=prec, pp=pp)
        except InputError:
            continue  # illegal combination: Plan refuses it (tested in test_render_illegal_plans_refused)
        yield pytest.param(stage, oo, op, prec, pp, id=f"z{stage}-oo_{oo}-op_{op}-{prec}-pp{pp}")


TRAIN_CASES = list(_train_cases())
INFER_CASES = [pytest.param(prec, tp, id=f"infer-{prec}-tp{tp}") for prec in ("bf16", "fp16", "fp32", "fp8", "int8") for tp in (1, 2, 8)]
ZINF_CASES = [pytest.param(prec, op, id=f"zero_inference-{prec}-op_{op}") for prec in ("bf16", "fp16", "fp32", "fp8") for op in ("cpu", "nvme")]


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


@pytest.fixture(scope="module")
def cluster():
    return Cluster(get_gpu("H100-SXM"), NODES, GPN)


@pytest.fixture(scope="module")
def ds():
    pytest.importorskip("deepspeed")
    from qwen_ds.validate.dscheck import deepspeed_problems

    return deepspeed_problems


def _check_common(cfg, model, cluster, plan, pp=1):
    text = json.dumps(cfg, allow_nan=False)  # plain JSON: no NaN/inf slipped in
    assert "auto" not in [v for _, v in walk(cfg)], text
    ctx = Context(world_size=cluster.world_size, gpus_per_node=cluster.gpus_per_node, pp=pp, gpu=cluster.gpu, model=model)
    errors = [p for p in validate_config(cfg, ctx) if p.severity == "error"]
    assert errors == [], errors
    return ctx


def test_matrix_is_large_enough():
    # every stage, every legal offload pair, every precision, PP 1 and 2 for stage 0/1
    assert len(TRAIN_CASES) == 8 + 24 + 12 + 36
    assert {c.values[0] for c in TRAIN_CASES} == {0, 1, 2, 3}
    assert {c.values[4] for c in TRAIN_CASES} == {1, 2}


@pytest.mark.parametrize("stage,oo,op,prec,pp", TRAIN_CASES)
def test_train_matrix_accepted_by_deepspeed_and_validate(stage, oo, op, prec, pp, model, cluster, ds):
    plan = Plan(zero_stage=stage, offload_optimizer=oo, offload_param=op, precision=prec, pp=pp, micro_batch=2, grad_accum=4)
    cfg = render(model, cluster, Workload(mode="train"), plan, ConfigOptions(nvme_path=NVME))
    _check_common(cfg, model, cluster, plan, pp)
    assert not is_inference_config(cfg)
    # DeepSpeed's PipelineEngine builds DeepSpeedConfig with the PipelineModule's mpu, whose
    # data-parallel world is world / pp; without PP it is the whole world.
    dp_world = cluster.world_size // pp
    assert ds(cfg, dp_world, False) == []

    # what was rendered is what the plan says
    dp = WORLD // pp
    assert cfg["train_batch_size"] == 2 * 4 * dp
    assert cfg["train_micro_batch_size_per_gpu"] == 2 and cfg["gradient_accumulation_steps"] == 4
    z = cfg["zero_optimization"]
    assert z["stage"] == stage
    if prec in ("bf16", "fp8"):
        assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    elif prec == "fp16":
        assert cfg["fp16"]["enabled"] is True and cfg["fp16"]["loss_scale"] == 0 and "bf16" not in cfg
    else:
        assert "bf16" not in cfg and "fp16" not in cfg
    for key, dev in (("offload_optimizer", oo), ("offload_param", op)):
        if dev == "none":
            assert key not in z
        else:
            assert z[key]["device"] == dev
            assert (z[key].get("nvme_path") == NVME) == (dev == "nvme")
    for key in INT_KEYS:
        if key in z:
            assert type(z[key]) is int, (key, z[key])
    if stage == 3:
        assert z["stage3_prefetch_bucket_size"] == 15099494
        assert z["stage3_param_persistence_threshold"] == 40960
    if stage > 0:
        assert z["reduce_bucket_size"] == 16777216 == z["allgather_bucket_size"]
    assert z["round_robin_gradients"] is (stage in (1, 2) and oo != "none")
    assert ("pipeline" in cfg) == (pp > 1)


@pytest.mark.parametrize("prec,tp", INFER_CASES)
def test_deepspeed_inference_matrix_accepted(prec, tp, model, cluster, ds):
    plan = Plan(zero_stage=0, tp=tp, precision=prec)
    wl = Workload(mode="infer", seq_len=2048, new_tokens=256)
    assert template_name(wl, plan) == "infer.json.j2"
    cfg = render(model, cluster, wl, plan)
    _check_common(cfg, model, cluster, plan)
    assert is_inference_config(cfg)
    assert ds(cfg, cluster.world_size, True) == []
    assert cfg["tensor_parallel"] == {"tp_size": tp}
    assert cfg["dtype"] == {"fp8": "bf16"}.get(prec, prec)  # DeepSpeed-Inference has no fp8 dtype
    assert cfg["replace_with_kernel_inject"] is False  # no injection policy for Qwen3
    assert cfg["max_out_tokens"] == 2048 + 256


@pytest.mark.parametrize("prec,op", ZINF_CASES)
def test_zero_inference_matrix_accepted(prec, op, model, cluster, ds):
    plan = Plan(zero_stage=3, offload_param=op, precision=prec)
    wl = Workload(mode="infer", seq_len=2048, new_tokens=256)
    assert template_name(wl, plan) == "zero_inference.json.j2"
    cfg = render(model, cluster, wl, plan, ConfigOptions(nvme_path=NVME))
    _check_common(cfg, model, cluster, plan)
    assert not is_inference_config(cfg)  # ZeRO-Inference goes through deepspeed.initialize
    assert ds(cfg, cluster.world_size, False) == []
    assert "optimizer" not in cfg and "scheduler" not in cfg
    assert cfg["zero_optimization"]["offload_param"]["device"] == op
    assert cfg["gradient_accumulation_steps"] == 1


@pytest.mark.parametrize("kw", [
    dict(zero_stage=2, offload_param="cpu"), dict(zero_stage=1, offload_param="nvme"), dict(zero_stage=0, offload_optimizer="cpu"),
    dict(zero_stage=2, pp=2), dict(zero_stage=3, pp=2), dict(zero_stage=2, hpz_partition_size=8), dict(zero_stage=4),
], ids=str)
def test_render_illegal_plans_refused(kw):
    with pytest.raises(InputError):
        Plan(**kw)


def test_world_one_cluster_renders_valid_config(ds):
    """The cluster the engine tests use: one H100 (world 1)."""
    m = load_model("tiny-qwen3")
    cl = Cluster(get_gpu("H100-SXM"), 1, 1)
    for plan in (Plan(zero_stage=3), Plan(zero_stage=3, offload_optimizer="cpu", offload_param="cpu"), Plan(zero_stage=1, precision="fp32"),
                 Plan(zero_stage=2, precision="fp16")):
        cfg = render(m, cl, Workload(seq_len=16), plan)
        assert cfg["train_batch_size"] == 1
        _check_common(cfg, m, cl, plan)
        assert ds(cfg, 1, False) == []


# --------------------------------------------------------------------------- render_context / templates


def test_bucket_sizes_are_exact_integers(model, cluster):
    ctx = render_context(model, cluster, Workload(), Plan(), ConfigOptions())
    z = ctx["zero"]
    assert (z["reduce_bucket_size"], z["prefetch_bucket_size"], z["param_persistence_threshold"]) == (16777216, 15099494, 40960)
    assert all(type(z[k]) is int for k in ("reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size", "param_persistence_threshold"))


def test_explicit_bucket_sizes_win(model, cluster):
    plan = Plan(reduce_bucket_size=5 * 10**8, prefetch_bucket_size=123, param_persistence_threshold=0)
    z = render(model, cluster, Workload(), plan)["zero_optimization"]
    assert z["reduce_bucket_size"] == 500000000
    assert z["stage3_prefetch_bucket_size"] == 123
    assert z["stage3_param_persistence_threshold"] == 0  # 0 is a value, not "unset"


def test_batch_uses_deepspeeds_rank_count(model, cluster):
    # DeepSpeed 0.19.8 counts AutoTP ranks in its batch equation (no mpu) and the pipeline engine
    # its data-parallel group (world / pp): the rendered batch must satisfy DeepSpeed's own check
    plan = Plan(zero_stage=1, tp=2, pp=2, micro_batch=3, grad_accum=5)
    cfg = render(model, cluster, Workload(), plan)
    assert cfg["train_batch_size"] == 3 * 5 * (WORLD // 2)
    assert cfg["tensor_parallel"] == {"autotp_size": 2}
    assert cfg["pipeline"]["activation_checkpoint_interval"] == 1


def test_checkpointing_block(model, cluster):
    on = render(model, cluster, Workload(), Plan(checkpointing=True))
    off = render(model, cluster, Workload(), Plan(checkpointing=False))
    assert on["activation_checkpointing"]["number_checkpoints"] == model.num_layers
    assert "activation_checkpointing" not in off


def test_zero_plus_plus_keys(model, cluster):
    cfg = render(model, cluster, Workload(), Plan(zero_stage=3, hpz_partition_size=8, quantized_weights=True, quantized_gradients=True))
    z = cfg["zero_optimization"]
    assert z["zero_hpz_partition_size"] == 8 and z["zero_quantized_weights"] is True and z["zero_quantized_gradients"] is True
    assert "zero_hpz_partition_size" not in render(model, cluster, Workload(), Plan(zero_stage=3))["zero_optimization"]


def test_communication_data_type_and_options(model, cluster):
    opts = ConfigOptions(lr=3e-4, warmup_steps=7, total_steps=70, gradient_clipping=0.5, steps_per_print=99, communication_data_type="fp32")
    cfg = render(model, cluster, Workload(), Plan(), opts)
    assert cfg["communication_data_type"] == "fp32"
    assert cfg["optimizer"] == {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1}}
    assert cfg["scheduler"]["params"]["warmup_max_lr"] == 3e-4
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 7 and cfg["scheduler"]["params"]["total_num_steps"] == 70
    assert cfg["gradient_clipping"] == 0.5 and cfg["steps_per_print"] == 99


def test_fp8_recipe_and_dtype():
    assert fp8_recipe(Plan(precision="bf16")) is None
    recipe = fp8_recipe(Plan(precision="fp8"))
    assert recipe["deepspeed_dtype"] == "bf16" and recipe["backend"]
    assert ds_dtype(Plan(precision="fp8")) == "bf16"
    assert ds_dtype(Plan(precision="fp16")) == "fp16"
    assert ds_dtype(Plan(precision="fp32")) == "fp32"


def test_nvme_without_path_refused(model, cluster):
    with pytest.raises(InputError, match="--nvme-path"):
        render(model, cluster, Workload(), Plan(offload_param="nvme"))


@pytest.mark.parametrize("path", ['/mnt/nv"me', "/mnt/a\nb", '", "evil": 1, "x": "', "/mnt/back\\slash", "/mnt/ünï}{", "</script>{{ 7*7 }}"])
def test_nvme_path_is_a_json_string(path, model, cluster):
    cfg = render(model, cluster, Workload(), Plan(offload_param="nvme", offload_optimizer="nvme"), ConfigOptions(nvme_path=path))
    z = cfg["zero_optimization"]
    assert z["offload_param"]["nvme_path"] == path
    assert z["offload_optimizer"]["nvme_path"] == path
    assert "evil" not in cfg and "evil" not in z


def test_template_names():
    assert template_name(Workload(mode="train"), Plan(zero_stage=0)) == "train.json.j2"
    assert template_name(Workload(mode="infer"), Plan(zero_stage=0)) == "infer.json.j2"
    assert template_name(Workload(mode="infer"), Plan(zero_stage=3, offload_param="cpu")) == "zero_inference.json.j2"


def test_default_template_dir_has_the_templates():
    d = default_template_dir()
    for name in ("train.json.j2", "infer.json.j2", "zero_inference.json.j2", "partials/zero.j2", "partials/precision.j2",
                 "partials/optimizer.j2"):
        assert (d / name).is_file(), name


def _copy_templates(tmp_path: Path) -> Path:
    dst = tmp_path / "tpl"
    shutil.copytree(default_template_dir(), dst, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dst


def test_custom_template_dir_used(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    train = tdir / "train.json.j2"
    train.write_text(train.read_text().replace('"steps_per_print": {{ opts.steps_per_print|tojson }}', '"steps_per_print": 4242'))
    cfg = render(model, cluster, Workload(), Plan(), template_dir=tdir)
    assert cfg["steps_per_print"] == 4242


def test_template_dir_missing_template(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    (tdir / "infer.json.j2").unlink()
    with pytest.raises(InputError, match="no template 'infer.json.j2'"):
        render(model, cluster, Workload(mode="infer"), Plan(zero_stage=0), template_dir=tdir)


def test_template_syntax_error(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    (tdir / "train.json.j2").write_text("{\n  \"a\": {{ batch.train_batch_size|tojson }\n}\n")
    with pytest.raises(InputError, match="template train.json.j2 line"):
        render(model, cluster, Workload(), Plan(), template_dir=tdir)


def test_template_undefined_variable(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    (tdir / "train.json.j2").write_text('{"a": {{ opts.step_per_print }}}')
    with pytest.raises(InputError, match="step_per_print"):
        render(model, cluster, Workload(), Plan(), template_dir=tdir)


def test_template_undefined_variable_through_tojson(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    (tdir / "train.json.j2").write_text('{"a": {{ opts.step_per_print|tojson }}}')
    with pytest.raises(InputError, match="step_per_print"):
        render(model, cluster, Workload(), Plan(), template_dir=tdir)


def test_template_rendering_invalid_json(tmp_path, model, cluster):
    tdir = _copy_templates(tmp_path)
    (tdir / "train.json.j2").write_text('{"a": 1,\n"b": }')
    with pytest.raises(InputError, match="invalid JSON at line 2"):
        render(model, cluster, Workload(), Plan(), template_dir=tdir)


def test_render_text_uses_given_dir(tmp_path):
    (tmp_path / "x.j2").write_text("{{ v|tojson }}")
    assert render_text({"v": 'a"b'}, "x.j2", tmp_path) == '"a\\"b"'


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize("item,path,expected", [
    ("zero_optimization.stage3_max_live_parameters=1e9", ("zero_optimization", "stage3_max_live_parameters"), 1000000000),
    ("zero_optimization.reduce_bucket_size=5e8", ("zero_optimization", "reduce_bucket_size"), 500000000),
    ("gradient_clipping=0.5", ("gradient_clipping",), 0.5),
    ("zero_optimization.offload_param.device=cpu", ("zero_optimization", "offload_param", "device"), "cpu"),
    ("bf16.enabled=false", ("bf16", "enabled"), False),
    ('optimizer.params.betas=[0.9, 0.999]', ("optimizer", "params", "betas"), [0.9, 0.999]),
    ('wandb={"enabled": true, "project": "p"}', ("wandb",), {"enabled": True, "project": "p"}),
    ("comms_logger.enabled=true", ("comms_logger", "enabled"), True),
    ("steps_per_print=null", ("steps_per_print",), None),
    ("a.b=x=y", ("a", "b"), "x=y"),
])
def test_apply_override(item, path, expected):
    cfg = {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}, "optimizer": {"params": {}}}
    apply_override(cfg, item)
    node = cfg
    for key in path:
        node = node[key]
    assert node == expected and type(node) is type(expected)


@pytest.mark.parametrize("item,match", [
    ("zero_optimization.stage", "expected KEY.PATH=VALUE"),
    ("zero_optimization..stage=1", "empty key"),
    ("=1", "empty key"),
    ("bf16.enabled.x=1", "'enabled' is true, not an object"),
])
def test_apply_override_errors(item, match):
    with pytest.raises(InputError, match=match):
        apply_override({"bf16": {"enabled": True}}, item)


def test_overrides_applied_by_render_then_validated(model, cluster):
    cfg = render(model, cluster, Workload(), Plan(), overrides=["zero_optimization.stage=5"])
    assert cfg["zero_optimization"]["stage"] == 5
    ctx = Context(world_size=WORLD, gpus_per_node=GPN, gpu=cluster.gpu, model=model)
    probs = [p for p in validate_config(cfg, ctx) if p.severity == "error"]
    assert [p.path for p in probs] == ["$.zero_optimization.stage"]


# --------------------------------------------------------------------------- known package bugs (strict xfail)


def test_validate_with_deepspeed_accepts_rendered_pipeline_config(model, cluster, ds):
    cfg = render(model, cluster, Workload(), Plan(zero_stage=1, pp=2, micro_batch=2, grad_accum=4))
    ctx = Context(world_size=WORLD, gpus_per_node=GPN, pp=2, gpu=cluster.gpu, model=model)
    assert [p for p in validate_config(cfg, ctx, use_deepspeed=True) if p.severity == "error"] == []


def test_rendered_autotp_training_config_accepted_by_deepspeed(model, cluster, ds):
    cfg = render(model, cluster, Workload(), Plan(zero_stage=1, tp=2, micro_batch=2, grad_accum=4))
    assert ds(cfg, cluster.world_size, False) == []


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kw,needle", [
    ({"lr": NAN}, "--lr nan: must be a finite number > 0"), ({"lr": INF}, "--lr inf"), ({"lr": -INF}, "--lr -inf"), ({"lr": 0}, "--lr 0"),
    ({"gradient_clipping": NAN}, "--gradient-clipping nan"), ({"gradient_clipping": -1.0}, "--gradient-clipping -1.0: must be a finite number >= 0"),
    ({"eps": NAN}, "eps nan"), ({"eps": 0}, "eps 0"), ({"weight_decay": INF}, "weight_decay inf"), ({"weight_decay": -0.1}, "weight_decay -0.1"),
    ({"betas": (0.9,)}, "betas [0.9]: must be two numbers in [0, 1)"), ({"betas": (0.9, 1.0)}, "betas [0.9, 1.0]"),
    ({"betas": (NAN, 0.95)}, "betas [nan, 0.95]"),
    ({"warmup_steps": -5}, "--warmup-steps -5: must be an integer >= 1"), ({"warmup_steps": 0}, "--warmup-steps 0"),
    ({"warmup_steps": 10.0}, "--warmup-steps 10.0"), ({"total_steps": -5}, "--total-steps -5: must be an integer >= 100"),
    ({"warmup_steps": 100, "total_steps": 50}, "--total-steps 50: must be an integer >= 100 (at least --warmup-steps 100)"),
])
def test_config_options_refuse_what_deepspeed_cannot_use(kw, needle):
    with pytest.raises(InputError) as info:
        ConfigOptions(**kw)
    assert needle in str(info.value)


def test_config_options_limits_accepted(model, cluster):
    opts = ConfigOptions(gradient_clipping=0, weight_decay=0, betas=(0, 0.999), warmup_steps=1, total_steps=1)
    cfg = render(model, cluster, Workload(), Plan(), opts)
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == cfg["scheduler"]["params"]["total_num_steps"] == 1
    assert validate_config(cfg, Context(world_size=WORLD, gpus_per_node=GPN)) == []
