"""The Python API (qwen_ds/api.py), plan.json's typed document (qwen_ds/plandoc.py) and the knob
table (qwen_ds/knobs.py): each use case returns what its command prints, the search carries the real
estimate, generate publishes a plan.json that reads back to the same document, PlanDocument refuses
wrong types field by field, and every DeepSpeed key of the knob table survives render -> read back."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from qwen_ds import api, knobs, plandoc
from qwen_ds.errors import EXIT_BAD_INPUT, InputError
from qwen_ds.plandoc import PlanDocument
from qwen_ds.render import render
from qwen_ds.validate.plan_from_config import plan_from_config

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL, GPU, NODES = "Qwen3-8B", "H100-SXM", 2

BASE = api.inputs(MODEL, GPU, nodes=NODES)
Plan = type(BASE.plan)
Workload = type(BASE.workload)
#: every searched knob given: generate renders exactly this plan ("flags"), no search
ZERO3 = {"zero_stage": 3, "offload_optimizer": "none", "offload_param": "none", "tp": 1, "pp": 1, "micro_batch": 2,
         "grad_accum": 1, "checkpointing": True}


def knobs_of(p) -> dict:
    """The searched knobs of a plan, as API keywords."""
    return {k: getattr(p, k) for k in knobs.SEARCHED}


def cli_json(*args: str) -> dict:
    rc, out, err = run_cli(*args)
    assert rc == 0, err
    return json.loads(out)


# --------------------------------------------------------------------------- estimate


def test_estimate_from_package_matches_cli_json_and_imports_no_heavy_modules():
    code = ("import json, sys\n"
            "from qwen_ds import estimate\n"
            "e = estimate('Qwen3-8B', 'H100-SXM', nodes=2, micro_batch=2)\n"
            "heavy = sorted(m for m in ('torch', 'deepspeed', 'transformers', 'click') if m in sys.modules)\n"
            "print(json.dumps({'fits': e.fits, 'fits_type': type(e.fits).__name__, 'json': e.to_json(), 'heavy': heavy}))\n")
    p = subprocess.run([PY, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["fits_type"] == "bool" and got["fits"] is True
    assert got["heavy"] == []
    cli = subprocess.run([PY, "-m", "qwen_ds.cli", "estimate", "-m", MODEL, "-g", GPU, "--nodes", "2", "--micro-batch", "2", "--json"],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert got["json"] == json.loads(cli.stdout)
    assert got["json"]["fits"] is True and got["json"]["gpu_total_bytes"] > 0


def test_estimate_unknown_knob_is_a_type_error():
    with pytest.raises(TypeError, match="micro_batches"):
        api.estimate(MODEL, GPU, nodes=NODES, micro_batches=2)


# --------------------------------------------------------------------------- plan


def test_plan_pins_the_knobs_given():
    found = api.plan(MODEL, GPU, nodes=NODES, micro_batch=2)
    assert found.accepted
    assert {c.plan.micro_batch for c in found.accepted} == {2}
    # pinned=[]: micro_batch=2 is only a starting point; the planner tries others
    free = api.plan(MODEL, GPU, nodes=NODES, micro_batch=2, pinned=[])
    assert free.result.considered > found.result.considered
    assert len({c.plan.micro_batch for c in free.accepted}) > 1


def test_plan_pinned_names_pin_only_those():
    found = api.plan(MODEL, GPU, nodes=NODES, micro_batch=2, zero_stage=3, pinned=["zero_stage"])
    assert found.accepted
    assert {c.plan.zero_stage for c in found.accepted} == {3}
    assert len({c.plan.micro_batch for c in found.accepted}) > 1


def test_best_estimate_is_the_real_estimate():
    found = api.plan(MODEL, GPU, nodes=NODES, micro_batch=2)
    best = found.best_estimate()
    assert best is not None and best.plan == found.best.plan
    again = api.estimate(MODEL, GPU, nodes=NODES, **knobs_of(found.best.plan))
    assert again.plan == best.plan
    assert best.memory.gpu_total_bytes == again.memory.gpu_total_bytes
    assert best.memory.terms_dict() == again.memory.terms_dict()
    assert best.layout == again.layout
    assert best.to_json() == again.to_json()


def test_best_estimate_of_an_empty_search_is_none():
    found = api.plan("Qwen3-32B", GPU, nodes=1, gpus_per_node=1, mode="infer", offload_param="none",
                     options=api.SearchOptions(headroom=0.1))
    assert found.result.considered > 0 and len(found.accepted) == 0
    assert found.to_json()["best"] == [] and found.to_json()["rejected_families"]
    assert found.best is None and found.best_estimate() is None


def test_plan_to_json_matches_cli_json():
    found = api.plan(MODEL, GPU, nodes=NODES, micro_batch=2)
    cli = cli_json("plan", "-m", MODEL, "-g", GPU, "--nodes", "2", "--micro-batch", "2", "--json")
    assert found.to_json() == cli
    assert cli["accepted"] == len(found.accepted) and cli["best"]


# --------------------------------------------------------------------------- generate


def test_generate_without_output_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = api.generate(MODEL, GPU, nodes=NODES, micro_batch=2)
    assert list(tmp_path.iterdir()) == []
    assert g.paths == ()
    assert g.config["train_micro_batch_size_per_gpu"] == 2
    assert g.document.ds_config == g.config
    assert g.document.plan == g.estimate.plan
    assert g.document.memory.gpu_total_bytes == g.estimate.memory.gpu_total_bytes
    assert g.document.check_config(g.config).status == "match"
    assert g.document.chosen_by.startswith("planner") and "micro_batch" in g.document.chosen_by


def test_generate_with_output_dir_round_trips(tmp_path):
    out = tmp_path / "out"
    g = api.generate(MODEL, GPU, nodes=NODES, output_dir=out, **ZERO3)
    assert sorted(p.name for p in out.iterdir()) == ["ds_config.json", "plan.json"]
    assert set(g.paths) == {out / "ds_config.json", out / "plan.json"}
    cfg = json.loads((out / "ds_config.json").read_text())
    assert cfg == g.config
    raw = json.loads((out / "plan.json").read_text())
    doc = PlanDocument.from_json(raw)
    assert doc == g.document
    assert doc.to_json() == raw
    assert doc.check_config(cfg).status == "match"
    assert doc.deepspeed_version == importlib.metadata.version("deepspeed")
    assert doc.schema_version == plandoc.SCHEMA_VERSION == raw["schema_version"]
    assert doc.chosen_by == "flags"
    assert doc.plan.zero_stage == 3 and doc.plan.micro_batch == 2
    assert doc.cluster.nodes == NODES and doc.cluster.world_size == NODES * 8
    assert doc.memory.gpu_total_bytes == g.estimate.memory.gpu_total_bytes
    # plan.json stores the plan once: no copy under memory
    assert "plan" not in raw["memory"]


def test_generated_document_refuses_an_edited_config(tmp_path):
    g = api.generate(MODEL, GPU, nodes=NODES, **ZERO3)
    edited = json.loads(json.dumps(g.config))
    edited["train_micro_batch_size_per_gpu"] = 4
    assert g.document.check_config(edited).status != "match"


def test_generate_refuses_an_existing_output_without_force(tmp_path):
    api.generate(MODEL, GPU, nodes=NODES, output_dir=tmp_path, **ZERO3)
    before = (tmp_path / "plan.json").read_bytes()
    with pytest.raises(InputError):
        api.generate(MODEL, GPU, nodes=NODES, output_dir=tmp_path, **{**ZERO3, "micro_batch": 1})
    assert (tmp_path / "plan.json").read_bytes() == before
    api.generate(MODEL, GPU, nodes=NODES, output_dir=tmp_path, force=True, **{**ZERO3, "micro_batch": 1})
    assert PlanDocument.from_json(json.loads((tmp_path / "plan.json").read_text())).plan.micro_batch == 1


# --------------------------------------------------------------------------- PlanDocument.from_json


def test_newer_schema_is_refused():
    with pytest.raises(InputError, match="newer qwen-ds") as exc:
        PlanDocument.from_json({"schema_version": plandoc.SCHEMA_VERSION + 1}, "x/plan.json")
    assert str(exc.value).startswith("x/plan.json: ")
    assert PlanDocument.from_json({"schema_version": plandoc.SCHEMA_VERSION}).schema_version == plandoc.SCHEMA_VERSION


def test_old_format_document_loads():
    old = {"model": {"name": "Qwen3-8B"}, "plan": {"zero_stage": 2, "micro_batch": 3, "dp": 16},
           "memory": {"plan": {"zero_stage": 2}, "model": "x", "gpu_total_bytes": 5}}
    doc = PlanDocument.from_json(old)
    assert doc.memory.gpu_total_bytes == 5
    assert doc.schema_version == plandoc.SCHEMA_VERSION
    assert doc.plan.zero_stage == 2 and doc.plan.micro_batch == 3 and doc.dp == 16
    assert doc.model.name == "Qwen3-8B" and doc.cluster is None
    assert doc.ds_config_sha256 is None and doc.launch_command == ()


def test_absent_sections_take_the_planner_defaults():
    doc = PlanDocument.from_json({})
    assert doc.workload.seq_len == 4096
    assert doc.plan.loss == "hf"
    assert doc.workload == Workload() and doc.plan == Plan()
    assert doc.model is None and doc.cluster is None and doc.memory is None
    # and a fresh document writes and reads back to itself
    assert PlanDocument.from_json(doc.to_json()) == doc


@pytest.mark.parametrize("doc, field", [
    ({"plan": {"micro_batch": "2"}}, "plan.micro_batch"),
    ({"plan": {"checkpointing": 1}}, "plan.checkpointing"),
    ({"plan": {"reduce_bucket_size": -1}}, "plan.reduce_bucket_size"),
    ({"memory": {"terms": {"a": "x"}}}, "memory.terms"),
    ({"memory": {"gpu_total_bytes": True}}, "memory.gpu_total_bytes"),
    ({"launch": {"command": [1]}}, "launch.command"),
    ({"workload": {"seq_len": 0}}, "workload.seq_len"),
    ({"cluster": {"nodes": 1.5}}, "cluster.nodes"),
    ({"schema_version": "1"}, "schema_version"),
    ({"ds_config_sha256": "ABC"}, "ds_config_sha256"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_wrong_types_name_the_field(doc, field):
    with pytest.raises(InputError) as exc:
        PlanDocument.from_json(doc, "p/plan.json")
    msg = str(exc.value)
    assert msg.startswith(f"p/plan.json: {field} is "), msg
    assert "\n" not in msg


def test_not_an_object_is_refused():
    with pytest.raises(InputError, match="a JSON object, got a list"):
        PlanDocument.from_json([1, 2], "p/plan.json")


def test_plan_rule_broken_in_the_file_names_the_file():
    with pytest.raises(InputError) as exc:
        PlanDocument.from_json({"plan": {"zero_stage": 2, "offload_param": "cpu"}}, "some/plan.json")
    msg = str(exc.value)
    assert msg.startswith("some/plan.json: "), msg
    assert "needs --zero 3" in msg and plandoc.FIX in msg


def test_read_plan_document_from_a_file(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"plan": {"micro_batch": "2"}}))
    with pytest.raises(InputError) as exc:
        plandoc.read_plan_document(str(path), "--plan")
    assert str(exc.value).startswith(f"--plan {path}: plan.micro_batch is ")
    path.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        plandoc.read_plan_document(str(path), "--plan")


# --------------------------------------------------------------------------- knobs


def _plans():
    b = BASE.plan
    r = dataclasses.replace
    return {
        "zero1": r(b, zero_stage=1), "zero2": r(b, zero_stage=2), "zero3": r(b, zero_stage=3),
        "micro4": r(b, micro_batch=4), "accum8": r(b, grad_accum=8), "tp2-zero1": r(b, tp=2, zero_stage=1),
        "hpz8-zero3": r(b, zero_stage=3, hpz_partition_size=8),
        "buckets-zero3": r(b, zero_stage=3, reduce_bucket_size=123456, allgather_bucket_size=234567,
                           prefetch_bucket_size=345678, param_persistence_threshold=4567),
        "stage3-knobs": r(b, zero_stage=3, max_live_parameters=7_000_000, max_reuse_distance=8_000_000, sub_group_size=9_000_000),
        "buckets-zero2": r(b, zero_stage=2, reduce_bucket_size=123456, allgather_bucket_size=234567),
        "offload-cpu": r(b, zero_stage=3, offload_optimizer="cpu", offload_param="cpu"),
        "fp16": r(b, precision="fp16"),
    }


PLANS = _plans()


def _cases():
    # DeepSpeed reads the stage-3 keys only under ZeRO-3 and the templates write them only there: below
    # it they read back as the plan's default (derived from the model), as the plan has them
    for name, p in PLANS.items():
        for key in knobs.DS_KEYS:
            yield pytest.param(name, key.name, id=f"{name}-{key.name}")


def _expected(p, field: str):
    concrete = {**{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}, **p.buckets(BASE.model.hidden_size)}
    return concrete[field]


@pytest.mark.parametrize("plan_name, field", list(_cases()))
def test_every_ds_key_reads_back_from_the_rendered_config(plan_name, field):
    p = PLANS[plan_name]
    cfg = render(BASE.model, BASE.cluster, BASE.workload, p)
    back = plan_from_config(cfg, pp=p.pp, checkpointing=p.checkpointing, loss=p.loss, kernels=p.kernels)
    assert _expected(back, field) == _expected(p, field)


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_special_keys_read_back_from_the_rendered_config(plan_name):
    p = PLANS[plan_name]
    cfg = render(BASE.model, BASE.cluster, BASE.workload, p)
    back = plan_from_config(cfg, pp=p.pp, checkpointing=p.checkpointing, loss=p.loss, kernels=p.kernels)
    for field in knobs.DS_SPECIAL:
        assert getattr(back, field) == getattr(p, field), field


def test_explicit_buckets_reach_the_config():
    cfg = render(BASE.model, BASE.cluster, BASE.workload, PLANS["buckets-zero3"])
    z = cfg["zero_optimization"]
    assert z["reduce_bucket_size"] == 123456 and z["allgather_bucket_size"] == 234567
    assert knobs.lookup(cfg, "zero_optimization.stage3_prefetch_bucket_size") == 345678
    assert knobs.lookup(cfg, "zero_optimization.stage3_param_persistence_threshold") == 4567
    assert knobs.lookup(cfg, "zero_optimization.nope.deeper") is None
    assert knobs.lookup({"a": 1}, "a.b") is None


def test_every_knob_is_a_flag_of_estimate():
    rc, out, err = run_cli("estimate", "--help")
    assert rc == 0, err
    for k in knobs.KNOBS:
        assert k.flag in out, k.flag
        if k.kind is bool:
            assert f"--no-{k.flag[2:]}" in out


def test_knob_owners_and_searched_knobs_are_fields():
    plan_fields = {f.name for f in dataclasses.fields(Plan)}
    workload_fields = {f.name for f in dataclasses.fields(Workload)}
    assert {k.owner for k in knobs.KNOBS} == {"plan", "workload"}
    for k in knobs.KNOBS:
        assert k.name in (plan_fields if k.owner == "plan" else workload_fields), k.name
    assert knobs.SEARCHED and set(knobs.SEARCHED) <= plan_fields
    assert set(knobs.BY_NAME) == {k.name for k in knobs.KNOBS} and len(knobs.BY_NAME) == len(knobs.KNOBS)
    for key in knobs.DS_KEYS:
        assert key.name in plan_fields, key.name
    assert set(knobs.DS_SPECIAL) <= plan_fields
    assert not {k.name for k in knobs.DS_KEYS} & set(knobs.DS_SPECIAL)


def test_knob_defaults_are_the_inputs_defaults():
    i = api.inputs(MODEL, GPU, nodes=NODES)
    for k in knobs.KNOBS:
        if k.default is not None:
            owner = i.plan if k.owner == "plan" else i.workload
            assert getattr(owner, k.name) == k.default, k.name
    assert i.plan.zero_stage == 3 and i.plan.precision == "bf16"  # the derived defaults, for training on H100


# --------------------------------------------------------------------------- validate


@pytest.mark.parametrize("model, pins", [
    (MODEL, ZERO3),
    (MODEL, {**ZERO3, "zero_stage": 1, "micro_batch": 1}),
    (MODEL, {**ZERO3, "zero_stage": 2, "grad_accum": 4}),
    pytest.param("Qwen3-0.6B", {**ZERO3, "zero_stage": 0, "micro_batch": 1}, marks=pytest.mark.xfail(
        strict=True, reason="ZeRO-0 configs have no reduce_bucket_size: validate reads DeepSpeed's 5e8, gen-config "
                            "estimated h*h")),
], ids=["zero3", "zero1", "zero2", "zero0"])
def test_validate_memory_matches_generate(tmp_path, model, pins):
    g = api.generate(model, GPU, nodes=NODES, output_dir=tmp_path, **pins)
    v = api.validate(str(tmp_path / "ds_config.json"), model=model, gpu=GPU, nodes=NODES, use_deepspeed=False,
                     plan_path=str(tmp_path / "plan.json"))
    assert v.problems == () and v.ok and v.exit_code == 0
    assert v.deepspeed_checked is False
    assert v.memory.memory.gpu_total_bytes == g.estimate.memory.gpu_total_bytes
    assert v.to_json()["ok"] is True


def test_validate_against_another_plan_is_a_plan_error(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    api.generate(MODEL, GPU, nodes=NODES, output_dir=a, **ZERO3)
    api.generate(MODEL, GPU, nodes=NODES, output_dir=b, **{**ZERO3, "zero_stage": 2, "micro_batch": 1})
    v = api.validate(str(a / "ds_config.json"), model=MODEL, gpu=GPU, nodes=NODES, use_deepspeed=False,
                     plan_path=str(b / "plan.json"))
    plan_problems = [p for p in v.problems if p.rule == "plan"]
    assert plan_problems and all(p.severity == "error" for p in plan_problems)
    assert not v.ok and v.exit_code == EXIT_BAD_INPUT == 2
    assert v.memory is None  # no verdict for a config with errors


def test_validate_without_model_gives_no_verdict(tmp_path):
    api.generate(MODEL, GPU, nodes=NODES, output_dir=tmp_path, **ZERO3)
    v = api.validate(str(tmp_path / "ds_config.json"), nodes=NODES, use_deepspeed=False)
    assert v.ok and v.memory is None and v.exit_code == 0
    assert "memory:" not in v.verdict_text() and "ok (schema and rules)" in v.verdict_text()
