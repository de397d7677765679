"""A ds_config.json and the plan.json made with it belong together: plan.json records the config's
digest, and `launch` refuses a config that is not its plan's (exit 2, the differing keys), warns
about a plan.json too old to record a digest, and reads plan.json's fields with their types checked.
Also the pieces: the digest, the differences, and gen-config's re-reading of a config after --set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_ds.errors import InputError
from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.models import load_model
from qwen_ds.knobs import Plan, Workload
from qwen_ds.pairing import ABSENT, config_digest, differences
from qwen_ds.plandoc import PlanDocument, parse_plan_text
from qwen_ds.render import apply_override, render
from qwen_ds.validate.plan_from_config import plan_with_edits

from helpers import run_cli, tiny_pair

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def launch(cfg: Path, plan: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(cfg.parent.parent / "hostfile"), "--config", str(cfg),
                           "--plan", str(plan), "--master-port", "auto", "--run-dir", str(cfg.parent.parent / "run"), *extra,
                           "train", "--steps", "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)


# --------------------------------------------------------------------------- launch


def test_launch_refuses_a_config_beside_another_plan(tmp_path):
    """The issue's case: a ZeRO-2 / micro-batch 1 config beside a ZeRO-3 / micro-batch 2 plan launched silently."""
    z2, z3 = tiny_pair(tmp_path / "z2", 2, 1), tiny_pair(tmp_path / "z3", 3, 2)
    p = launch(z2 / "ds_config.json", z3 / "plan.json")
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if "is not the config" in ln]
    assert line.startswith(f"error: preflight: {z2 / 'ds_config.json'} is not the config {z3 / 'plan.json'} was made with: ")
    assert "zero_optimization.stage: config 2, plan 3" in line and "train_micro_batch_size_per_gpu: config 1, plan 2" in line
    assert "regenerate both with qwen-ds gen-config" in line
    assert not (tmp_path / "run").exists()  # nothing started


def test_launch_dry_run_of_a_matching_pair_has_no_pair_problem(tmp_path):
    z2 = tiny_pair(tmp_path / "z2", 2, 1)
    p = launch(z2 / "ds_config.json", z2 / "plan.json", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "is not the config" not in p.stderr and "ds_config_sha256" not in p.stderr


def test_launch_warns_about_a_plan_without_digest(tmp_path):
    z2 = tiny_pair(tmp_path / "z2", 2, 1)
    plan = json.loads((z2 / "plan.json").read_text())
    del plan["ds_config_sha256"], plan["ds_config"]
    (z2 / "plan.json").write_text(json.dumps(plan))
    p = launch(z2 / "ds_config.json", z2 / "plan.json", "--dry-run")
    assert p.returncode == 0, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if "ds_config_sha256" in ln]
    assert line.startswith("warning: preflight: ") and "written by an older qwen-ds" in line


@pytest.mark.parametrize("doc", [
    [1, 2],
    {"plan": {"pp": "two"}},
    {"plan": []},
    {"cluster": {"world_size": "16", "gpus_per_node": 8}},
    {"cluster": {"gpus_per_node": 2.5}},
    {"ds_config_sha256": ["x"]},
], ids=lambda d: json.dumps(d)[:40])
def test_launch_plan_with_wrong_types_is_one_line_exit_2(tmp_path, doc):
    z2 = tiny_pair(tmp_path / "z2", 2, 1)
    bad = tmp_path / "bad_plan.json"
    bad.write_text(json.dumps(doc))
    rc, _, err = run_cli("launch", "--hostfile", str(tmp_path / "hostfile"), "--config", str(z2 / "ds_config.json"),
                         "--plan", str(bad), "--dry-run", "train")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: --plan {bad}: "), err


# --------------------------------------------------------------------------- digest and differences


def test_digest_ignores_key_order_and_integral_float_spelling():
    a = {"zero_optimization": {"stage": 3, "reduce_bucket_size": 500000000}, "gradient_clipping": 1.0, "lr": 2e-5}
    b = {"lr": 2e-5, "gradient_clipping": 1, "zero_optimization": {"reduce_bucket_size": 5e8, "stage": 3}}
    assert config_digest(a) == config_digest(b)
    assert differences(a, b) == []
    assert config_digest(a) != config_digest({**a, "gradient_clipping": 1.5})
    assert config_digest({"x": True}) != config_digest({"x": 1})  # a bool is not a number


def test_differences_name_dotted_paths_and_absent_keys():
    cfg = {"zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": True}}
    plan = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 10}, "train_micro_batch_size_per_gpu": 2}
    assert differences(cfg, plan) == [
        ("zero_optimization.stage", 2, 3), ("zero_optimization.stage3_prefetch_bucket_size", ABSENT, 10),
        ("train_micro_batch_size_per_gpu", 1, 2), ("bf16", {"enabled": True}, ABSENT)]


def check_pair(cfg: dict, doc: dict):
    return PlanDocument.from_json(doc).check_config(cfg)


def test_check_pair_statuses():
    cfg = {"train_batch_size": 16}
    assert check_pair(cfg, {}).status == "unchecked"
    assert check_pair(cfg, {"ds_config_sha256": config_digest(cfg), "ds_config": cfg}).status == "match"
    other = {"train_batch_size": 32}
    pair = check_pair(cfg, {"ds_config_sha256": config_digest(other), "ds_config": other})
    assert pair.status == "mismatch" and pair.differences == (("train_batch_size", 16, 32),)
    # a plan.json whose digest is not its own config's: a mismatch without keys to name
    assert check_pair(cfg, {"ds_config_sha256": config_digest(other), "ds_config": cfg}) == check_pair(cfg, {"ds_config_sha256": "0" * 64})


def test_parse_plan_text_accepts_what_gen_config_writes_and_older_plans(tmp_path):
    z2 = tiny_pair(tmp_path / "z2", 2, 1)
    doc = parse_plan_text((z2 / "plan.json").read_text(), "plan.json")
    assert doc.plan.zero_stage == 2 and doc.cluster.world_size == 2
    assert parse_plan_text("{}", "plan.json") == PlanDocument()  # every field may be absent
    with pytest.raises(InputError, match=r"^plan.json: workload.seq_len is 0 \(an integer\); it must be a positive integer; "):
        parse_plan_text(json.dumps({"workload": {"seq_len": 0}}), "plan.json")


# --------------------------------------------------------------------------- gen-config: the config as written


H8 = load_model("Qwen3-8B")
CLUSTER = Cluster(get_gpu("H100-SXM"), 2, 8)


@pytest.mark.parametrize("plan,mode", [
    (Plan(), "train"),
    (Plan(zero_stage=0, checkpointing=False), "train"),
    (Plan(zero_stage=1, pp=2, grad_accum=8), "train"),
    (Plan(zero_stage=2, offload_optimizer="cpu", micro_batch=4), "train"),
    (Plan(zero_stage=3, offload_optimizer="cpu", offload_param="cpu", hpz_partition_size=8, quantized_weights=True,
          quantized_gradients=True), "train"),
    (Plan(zero_stage=3, precision="fp8", loss="chunked", kernels="fused", tp=2), "train"),
    (Plan(zero_stage=0, tp=2), "infer"),
    (Plan(zero_stage=3, offload_param="cpu"), "infer"),
], ids=["z3", "z0", "z1-pp2", "z2-offload", "zeropp", "fp8-tp2", "infer-tp2", "zero-inference"])
def test_an_unedited_config_gives_back_the_plan_itself(plan, mode):
    cfg = render(H8, CLUSTER, Workload(mode=mode), plan)
    assert plan_with_edits(plan, cfg, json.loads(json.dumps(cfg))) == (plan, {})


def test_edits_change_only_the_knobs_they_touch():
    plan = Plan(zero_stage=3, precision="fp8", loss="chunked", kernels="fused", checkpointing=False)
    rendered = render(H8, CLUSTER, Workload(), plan)
    edited = json.loads(json.dumps(rendered))
    apply_override(edited, "zero_optimization.reduce_bucket_size=5e8")
    apply_override(edited, "train_micro_batch_size_per_gpu=2")
    new, changed = plan_with_edits(plan, rendered, edited)
    assert changed == {"reduce_bucket_size": (16777216, 500000000), "micro_batch": (1, 2)}
    # what the config does not say stays the plan's: FP8 over the bf16 config, the loss path, kernels, checkpointing
    assert new == Plan(zero_stage=3, precision="fp8", loss="chunked", kernels="fused", checkpointing=False,
                       reduce_bucket_size=500_000_000, micro_batch=2)


def test_an_edit_that_is_no_plan_names_set():
    plan = Plan(zero_stage=1, pp=2)
    rendered = render(H8, CLUSTER, Workload(), plan)
    edited = json.loads(json.dumps(rendered))
    apply_override(edited, "zero_optimization.stage=2")
    with pytest.raises(InputError, match=r"^--set: the config as written is no plan qwen-ds can estimate \(--pp 2 with --zero 2"):
        plan_with_edits(plan, rendered, edited)
