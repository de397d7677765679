"""`qwen-ds validate`: --json shape, exit codes 0/2/3, every problem reported, DeepSpeed's own parser
as the extra check, and no torch/deepspeed import in the validate / gen-config processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwen_ds.calibration import constant

from helpers import run_cli, tiny_pair

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

VALID = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
         "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": 16777216}}
CLUSTER = ["--nodes", "2", "--gpus-per-node", "8"]
NEXT_ON_A100 = ["-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", *CLUSTER]



def write(tmp_path: Path, cfg, name: str = "ds_config.json") -> str:
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return str(p)


def needs_deepspeed():
    pytest.importorskip("deepspeed")


# --------------------------------------------------------------------------- --json shape and exit codes


def test_json_shape_on_a_valid_config(tmp_path):
    rc, out, err = run_cli("validate", write(tmp_path, VALID), *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc) == {"config", "ok", "problems", "deepspeed_checked", "memory"}
    assert doc["ok"] is True and doc["problems"] == [] and doc["memory"] is None and doc["deepspeed_checked"] is False


def test_json_problem_shape_and_exit_2(tmp_path):
    bad = dict(VALID, train_batch_size=24)
    rc, out, _ = run_cli("validate", write(tmp_path, bad), *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 2
    doc = json.loads(out)
    assert doc["ok"] is False
    (p,) = doc["problems"]
    assert set(p) == {"path", "message", "rule", "severity"}
    assert (p["path"], p["rule"], p["severity"]) == ("$.train_batch_size", "batch", "error")
    assert "set it to 16" in p["message"]


def test_text_output_and_exit_0(tmp_path):
    path = write(tmp_path, VALID)
    rc, out, err = run_cli("validate", path, *CLUSTER, "--no-deepspeed")
    assert rc == 0 and f"{path}: ok (schema and rules)" in out and err == ""


def test_warning_only_exits_0(tmp_path):
    cfg = json.loads(json.dumps(VALID))
    cfg["zero_optimization"]["zero_hpz_partition_size"] = 16  # spans the two nodes: a warning
    rc, out, err = run_cli("validate", write(tmp_path, cfg), *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["ok"] is True and [p["severity"] for p in doc["problems"]] == ["warning"]


def test_every_problem_reported_not_only_the_first(tmp_path):
    cfg = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "fp16": {"enabled": True}, "bf16": {"enabled": True},
           "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}},
           "gradient_acumulation_step": 4}
    path = write(tmp_path, cfg)
    rc, out, _ = run_cli("validate", path, *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 2
    problems = json.loads(out)["problems"]
    assert {p["rule"] for p in problems} >= {"fp16_and_bf16", "offload_param_stage", "unknown_key"}
    assert {p["path"] for p in problems} >= {"$.fp16.enabled", "$.zero_optimization.offload_param", "$.gradient_acumulation_step"}
    # and the text form lists them all, one line each
    rc, _, err = run_cli("validate", path, *CLUSTER, "--no-deepspeed")
    assert rc == 2
    # the misspelt key is a warning (DeepSpeed ignores it), with the real key it is close to
    lines = [ln for ln in err.splitlines() if ln.startswith((f"{path}: error: ", f"{path}: warning: "))]
    assert len(lines) >= 3
    assert any("[fp16_and_bf16]" in ln for ln in lines) and any("[offload_param_stage]" in ln for ln in lines)
    assert any("[unknown_key]" in ln for ln in lines)


def test_exit_3_when_a_valid_config_does_not_fit(tmp_path):
    """ZeRO-3 without offload for Qwen3-Next-80B-A3B on 2 x 8 A100-80GB: a valid config, but ~98 GiB per GPU."""
    needs_deepspeed()
    cfg = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
           "bf16": {"enabled": True},
           "zero_optimization": {"stage": 3, "leaf_module": {"classes": ["Qwen3NextSparseMoeBlock"]}}}
    rc, out, err = run_cli("validate", write(tmp_path, cfg), *NEXT_ON_A100, "--json")
    assert rc == 3, err
    doc = json.loads(out)
    assert doc["problems"] == [] and doc["deepspeed_checked"] is True
    assert doc["ok"] is False
    mem = doc["memory"]
    assert mem["fits"] is False and mem["gpu_total_bytes"] > mem["gpu_memory_bytes"]
    assert mem["model"] == "Qwen3-Next-80B-A3B" and mem["gpu"] == "A100-80GB" and mem["nodes"] == 2 and mem["gpus_per_node"] == 8
    assert mem["plan"]["zero_stage"] == 3 and mem["plan"]["offload_param"] == "none"
    # the text form says DOES NOT FIT
    rc, out, _ = run_cli("validate", write(tmp_path, cfg), *NEXT_ON_A100, "--no-deepspeed")
    assert rc == 3 and "DOES NOT FIT" in out


def test_same_model_fits_with_cpu_offload(tmp_path):
    cfg = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
           "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    rc, out, _ = run_cli("validate", write(tmp_path, cfg), *NEXT_ON_A100, "--no-deepspeed", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["ok"] is True and doc["memory"]["fits"] is True
    assert doc["memory"]["plan"]["offload_param"] == "cpu" and doc["memory"]["plan"]["offload_optimizer"] == "cpu"


def test_no_memory_verdict_when_config_has_errors(tmp_path):
    cfg = dict(VALID, train_batch_size=24)
    rc, out, _ = run_cli("validate", write(tmp_path, cfg), *NEXT_ON_A100, "--no-deepspeed", "--json")
    assert rc == 2 and json.loads(out)["memory"] is None


@pytest.mark.parametrize("args,match", [
    (["--nodes", "0"], "--nodes 0"),
    (["--pp", "0"], "--pp 0"),
    (["--gpu", "Z80"], "unknown GPU"),
    (["--model", "no-such-model"], "unknown model"),
])
def test_bad_flags_exit_2(tmp_path, args, match):
    rc, _, err = run_cli("validate", write(tmp_path, VALID), "--no-deepspeed", *args)
    assert rc == 2 and match in err and "Traceback" not in err


def test_unreadable_and_malformed_files_exit_2(tmp_path):
    rc, _, err = run_cli("validate", str(tmp_path / "missing.json"), "--no-deepspeed")
    assert rc == 2 and "cannot read it" in err
    rc, _, err = run_cli("validate", write(tmp_path, '{\n  "train_batch_size": 8,\n  "bf16": {"enabled": 1,\n}\n'), "--no-deepspeed")
    assert rc == 2 and "line 5" in err and err.startswith("error: ") and "Traceback" not in err
    rc, _, err = run_cli("validate", write(tmp_path, '{"a": 1, "a": 2}'), "--no-deepspeed")
    assert rc == 2 and "duplicate keys a" in err


def test_malformed_value_reports_its_own_line(tmp_path):
    rc, _, err = run_cli("validate", write(tmp_path, '{\n  "train_batch_size": 8,\n  "bf16": {"enabled": tru\n}\n'), "--no-deepspeed")
    assert rc == 2 and "line 3" in err


@pytest.mark.parametrize("name", ["llamafactory_ds_z3_config.json", "axolotl_zero3_bf16.json"])
def test_peer_configs_through_the_cli(name):
    """Read as plain DeepSpeed configs (--for deepspeed), every "auto" is an error with the value to write."""
    rc, out, _ = run_cli("validate", str(FIXTURES / name), "--model", "Qwen3-8B", "--no-deepspeed", "--json",
                         "--for", "deepspeed")
    assert rc == 2
    msgs = " | ".join(p["message"] for p in json.loads(out)["problems"] if p["rule"] == "auto")
    for hint in ("h*h = 16777216", "int(0.9*h*h) = 15099494", "10*h = 40960"):
        assert hint in msgs


def test_hjson_file_through_the_cli(tmp_path):
    text = textwrap.dedent("""\
        {
          // copied from a wiki, with comments
          "train_batch_size": 16,
          "train_micro_batch_size_per_gpu": 1,  # per GPU
          "gradient_accumulation_steps": 1,
          "bf16": {"enabled": true,},
        }
        """)
    rc, out, err = run_cli("validate", write(tmp_path, text, "ds.hjson"), *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 0, err
    assert json.loads(out)["problems"] == []


# --------------------------------------------------------------------------- DeepSpeed's own parser as the extra check


def test_default_runs_deepspeed_parser_on_a_valid_config(tmp_path):
    needs_deepspeed()
    rc, out, err = run_cli("validate", write(tmp_path, VALID), *CLUSTER, "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["deepspeed_checked"] is True and doc["ok"] is True and doc["problems"] == []
    rc, out, _ = run_cli("validate", write(tmp_path, VALID), *CLUSTER)
    assert "ok (schema, rules and DeepSpeed 0.19.8 parser)" in out


def test_deepspeed_parser_catches_what_only_it_checks(tmp_path):
    """gradient_allreduce_op 'sum' with ZeRO-3: no rule of ours, DeepSpeed's _do_error_check refuses it."""
    needs_deepspeed()
    cfg = dict(VALID, gradient_allreduce_op="sum")
    path = write(tmp_path, cfg)
    rc, out, _ = run_cli("validate", path, *CLUSTER, "--no-deepspeed", "--json")
    assert rc == 0 and json.loads(out)["problems"] == []
    rc, out, _ = run_cli("validate", path, *CLUSTER, "--json")
    assert rc == 2
    doc = json.loads(out)
    (p,) = doc["problems"]
    assert p["rule"] == "deepspeed" and p["path"] == "$" and "'sum' is not supported with ZeRO stage 3" in p["message"]
    assert doc["deepspeed_checked"] is True


def test_fp16_and_bf16_caught_by_our_rule_with_deepspeed_on(tmp_path):
    needs_deepspeed()
    cfg = dict(VALID, fp16={"enabled": True})
    rc, out, _ = run_cli("validate", write(tmp_path, cfg), *CLUSTER, "--json")
    assert rc == 2
    problems = json.loads(out)["problems"]
    assert [(p["rule"], p["path"]) for p in problems] == [("fp16_and_bf16", "$.fp16.enabled")]


def test_deepspeed_parser_sees_the_cluster_world_size(tmp_path):
    """Batch keys consistent with 16 GPUs pass DeepSpeed's parser only if it is told the world is 16."""
    needs_deepspeed()
    from qwen_ds.validate.dscheck import deepspeed_problems

    assert deepspeed_problems(VALID, 16, False) == []
    assert deepspeed_problems(VALID, 8, False)  # 16 != 1 * 1 * 8


def test_deepspeed_subprocess_check_direct():
    needs_deepspeed()
    from qwen_ds.validate.dscheck import deepspeed_problems_subprocess

    assert deepspeed_problems_subprocess(VALID, 16, False) == []
    (p,) = deepspeed_problems_subprocess({"dtype": "fp8", "tensor_parallel": {"tp_size": 2}}, 16, True)
    assert p.rule == "deepspeed" and p.severity == "error"


# --------------------------------------------------------------------------- no heavy imports

NO_HEAVY_IMPORTS = textwrap.dedent("""\
    import json, os, sys
    from qwen_ds.cli import main

    def run(args):
        try:
            main(args)
        except SystemExit as exc:
            return exc.code
        return 0

    out = sys.argv[1]
    rcs = [
        run(["gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "2", "--gpus-per-node", "8", "-o", out]),
        run(["validate", os.path.join(out, "ds_config.json"), "--nodes", "2", "--gpus-per-node", "8",
             "-m", "Qwen3-8B", "-g", "H100-SXM", "--no-deepspeed", "--json"]),
        run(["validate", os.path.join(out, "ds_config.json"), "--nodes", "2", "--gpus-per-node", "8", "--json"]),
        run(["validate", os.path.join(out, "ds_config.json"), "--plan", os.path.join(out, "plan.json"), "--no-deepspeed"]),
    ]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "deepspeed", "transformers"))
    print("RESULT=" + json.dumps({"rcs": rcs, "heavy": heavy}))
    """)


def test_gen_config_and_validate_never_import_torch_or_deepspeed(tmp_path):
    """In one process: gen-config, validate --no-deepspeed, and validate with DeepSpeed's parser (which runs in a
    child process) leave torch, deepspeed and transformers out of sys.modules."""
    env = dict(os.environ)
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")]
    assert lines, proc.stdout + proc.stderr
    result = json.loads(lines[-1].split("=", 1)[1])
    assert result["heavy"] == []
    assert result["rcs"] == [0, 0, 0, 0], proc.stderr
    assert (tmp_path / "out" / "ds_config.json").is_file()


# --------------------------------------------------------------------------- --plan: the config must be the plan's


@pytest.fixture
def pairs(tmp_path):
    """The issue's pair: a ZeRO-2 / micro-batch 1 config and a ZeRO-3 / micro-batch 2 plan."""
    return tiny_pair(tmp_path / "z2", 2, 1), tiny_pair(tmp_path / "z3", 3, 2)


def test_plan_of_this_config_passes(pairs):
    z2, _ = pairs
    rc, out, err = run_cli("validate", str(z2 / "ds_config.json"), "--plan", str(z2 / "plan.json"), "--no-deepspeed")
    assert rc == 0 and err == "" and "ok" in out


def test_plan_of_another_config_is_refused_naming_each_key(pairs):
    z2, z3 = pairs
    cfg = str(z2 / "ds_config.json")
    rc, out, _ = run_cli("validate", cfg, "--plan", str(z3 / "plan.json"), "--no-deepspeed", "--json")
    assert rc == 2
    doc = json.loads(out)
    plan_problems = {p["path"]: p["message"] for p in doc["problems"] if p["rule"] == "plan"}
    assert plan_problems["$.zero_optimization.stage"].startswith("config 2, plan 3: ")
    assert plan_problems["$.train_micro_batch_size_per_gpu"].startswith("config 1, plan 2: ")
    assert plan_problems["$.zero_optimization.stage3_prefetch_bucket_size"].startswith("config (absent), plan ")
    assert all(p["severity"] == "error" for p in doc["problems"] if p["rule"] == "plan")
    rc, _, err = run_cli("validate", cfg, "--plan", str(z3 / "plan.json"), "--no-deepspeed")
    assert rc == 2 and f"{cfg}: error: $.zero_optimization.stage: config 2, plan 3: {z3 / 'plan.json'} was made with another config" in err


def test_a_hand_edit_of_the_config_is_refused(pairs):
    z2, _ = pairs
    cfg = json.loads((z2 / "ds_config.json").read_text())
    cfg["optimizer"]["params"]["lr"] = 1e-4
    (z2 / "ds_config.json").write_text(json.dumps(cfg))
    rc, out, _ = run_cli("validate", str(z2 / "ds_config.json"), "--plan", str(z2 / "plan.json"), "--no-deepspeed", "--json")
    assert rc == 2
    (p,) = [p for p in json.loads(out)["problems"] if p["rule"] == "plan"]
    assert p["path"] == "$.optimizer.params.lr" and p["message"].startswith("config 0.0001, plan 2e-05: ")


def test_reformatting_the_config_keeps_it_the_plans(pairs):
    """Key order, indentation, hjson comments and 1e9 for 1000000000 change no value: still the plan's config."""
    z2, _ = pairs
    cfg = json.loads((z2 / "ds_config.json").read_text())
    text = json.dumps(dict(reversed(list(cfg.items()))), indent=None)
    text = text.replace(": 1000000000", ": 1e9").replace(": 1.0,", ": 1,")
    (z2 / "ds_config.json").write_text("// reformatted\n" + text)
    rc, _, err = run_cli("validate", str(z2 / "ds_config.json"), "--plan", str(z2 / "plan.json"), "--no-deepspeed")
    assert rc == 0, err


def test_plan_without_a_digest_is_a_warning(pairs):
    """plan.json from before the digest: warned about, not refused."""
    z2, _ = pairs
    plan = json.loads((z2 / "plan.json").read_text())
    del plan["ds_config_sha256"], plan["ds_config"]
    (z2 / "plan.json").write_text(json.dumps(plan))
    rc, out, err = run_cli("validate", str(z2 / "ds_config.json"), "--plan", str(z2 / "plan.json"), "--no-deepspeed")
    assert rc == 0 and "ok" in out
    assert "warning: $: " in err and "has no ds_config_sha256" in err


def test_plan_with_a_digest_but_no_config_is_refused(pairs):
    z2, z3 = pairs
    plan = json.loads((z3 / "plan.json").read_text())
    del plan["ds_config"]
    (z3 / "plan.json").write_text(json.dumps(plan))
    rc, _, err = run_cli("validate", str(z2 / "ds_config.json"), "--plan", str(z3 / "plan.json"), "--no-deepspeed")
    assert rc == 2 and "its ds_config_sha256 is not the digest of this config" in err


@pytest.mark.parametrize("doc,match", [
    ([1, 2], "a plan.json is a JSON object, got a list"),
    ("plan", "a plan.json is a JSON object, got a string"),
    ({"plan": []}, "plan is [] (a list); it must be an object"),
    ({"plan": {"pp": "two"}}, 'plan.pp is "two" (a string); it must be a positive integer'),
    ({"plan": {"pp": True}}, "plan.pp is true (a boolean)"),
    ({"plan": {"pp": 0}}, "plan.pp is 0 (an integer); it must be a positive integer"),
    ({"plan": {"precision": "fp4"}}, "plan.precision"),
    ({"cluster": {"world_size": "8"}}, 'cluster.world_size is "8"'),
    ({"cluster": None}, "cluster is null"),
    ({"memory": {"terms": {"weights": "x"}}}, "memory.terms"),
    ({"model": {"config": [1]}}, "model.config"),
    ({"ds_config_sha256": 5}, "ds_config_sha256 is 5 (an integer); it must be 64 lowercase hex digits"),
    ({"ds_config_sha256": "abc"}, "ds_config_sha256"),
    ({"ds_config": "x"}, "ds_config is"),
], ids=lambda v: json.dumps(v)[:40] if not isinstance(v, str) else v[:20])
def test_plan_with_wrong_types_is_one_line_exit_2(tmp_path, doc, match):
    cfg = write(tmp_path, VALID)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(doc))
    rc, out, err = run_cli("validate", cfg, "--plan", str(plan), "--no-deepspeed")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"error: --plan {plan}: "), err
    assert match in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("content,match", [("{not json", "not JSON"), ("", "not JSON"), ("[" * 100000, "nested too deeply")])
def test_plan_that_is_not_json_is_one_line_exit_2(tmp_path, content, match):
    plan = tmp_path / "plan.json"
    plan.write_text(content)
    rc, _, err = run_cli("validate", write(tmp_path, VALID), "--plan", str(plan), "--no-deepspeed")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and match in err, err


def test_estimate_config_assumes_the_allocator_of_whoever_launches_it(tmp_path):
    """An "auto" config (HF Trainer / LLaMA-Factory) runs under torch's default allocator; a plain DeepSpeed config
    under qwen-ds launch's expandable segments; --allocator says otherwise (issue #16)."""
    fixtures = Path(__file__).parent / "fixtures"

    def reserved(config, *extra):
        rc, out, err = run_cli("estimate", "--config", str(fixtures / config), "-m", "Qwen3-8B", "-g", "A100-80GB",
                               "--nodes", "2", "--gpus-per-node", "8", "--micro-batch", "1", "--grad-accum", "1",
                               *extra, "--json")
        assert rc == 0, err
        doc = json.loads(out)
        return doc["plan"]["allocator"], doc["gpu_reserved_bytes"] / doc["gpu_allocated_bytes"]

    auto, ratio_default = reserved("llamafactory_ds_z3_config.json")
    assert auto == "default" and ratio_default == pytest.approx(1 + constant("fragmentation_default_allocator"), abs=1e-6)
    given, ratio_expandable = reserved("llamafactory_ds_z3_config.json", "--allocator", "expandable")
    assert given == "expandable" and ratio_expandable == pytest.approx(1 + constant("fragmentation"), abs=1e-6)
    assert ratio_default > ratio_expandable
    cfg = tmp_path / "plain.json"  # no "auto": a config qwen-ds launch runs as written
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                               "bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    rc, out, err = run_cli("estimate", "--config", str(cfg), "-m", "Qwen3-8B", "-g", "A100-80GB", "--nodes", "2",
                           "--gpus-per-node", "8", "--json")
    assert rc == 0, err
    assert json.loads(out)["plan"]["allocator"] == "expandable"


def test_validate_memory_verdict_takes_the_allocator():
    """validate's memory verdict sizes an "auto" config under torch's default allocator unless --allocator says."""
    root = Path(__file__).parent.parent
    args = ["validate", str(root / "tests/fixtures/readme_llamafactory_z3.json"), "--hostfile",
            str(root / "hostfiles/a100-2x8"), "--model", "Qwen3-8B", "--gpu", "A100-80GB", "--training-args",
            str(root / "examples/llamafactory_qwen3_full_sft.yaml"), "--no-deepspeed", "--json"]
    rc1, out1, err1 = run_cli(*args)
    rc2, out2, err2 = run_cli(*args, "--allocator", "expandable")
    assert rc1 == rc2 == 0, err1 + err2
    m1, m2 = json.loads(out1)["memory"], json.loads(out2)["memory"]
    assert m1["plan"]["allocator"] == "default" and m2["plan"]["allocator"] == "expandable"
    assert m1["gpu_allocated_bytes"] == m2["gpu_allocated_bytes"] and m1["gpu_reserved_bytes"] > m2["gpu_reserved_bytes"]
