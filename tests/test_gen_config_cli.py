"""`qwen-ds gen-config`: what it writes, --force, --set (re-estimated), FP8, --template-dir, exit 3,
JSON-safe strings, the config digest in plan.json, and one-line errors for bad output places.
Concurrency and SIGINT: tests/test_publish.py."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from qwen_ds.pairing import config_digest
from qwen_ds.render import default_template_dir
from qwen_ds.validate import is_inference_config

from helpers import run_cli, walk

CLUSTER = ["--nodes", "2", "--gpus-per-node", "8"]
#: every plan knob pinned, so the planner leaves the plan alone (later flags override these: click keeps the last)
PIN = ["--zero", "3", "--offload-optimizer", "none", "--offload-param", "none", "--micro-batch", "1", "--grad-accum", "1",
       "--tp", "1", "--pp", "1", "--checkpointing"]
BASE = ["gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER, *PIN]


def gen(out: Path, *extra: str, base=BASE) -> tuple[int, str, str]:
    return run_cli(*base, "-o", str(out), *extra)


def load(out: Path) -> tuple[dict, dict]:
    return json.loads((out / "ds_config.json").read_text()), json.loads((out / "plan.json").read_text())


def nothing_written(out: Path) -> bool:
    return not (out / "ds_config.json").exists() and not (out / "plan.json").exists()


# --------------------------------------------------------------------------- what it writes


def test_writes_ds_config_and_plan(tmp_path):
    out = tmp_path / "out"
    rc, stdout, err = gen(out, "--micro-batch", "2", "--grad-accum", "4")
    assert rc == 0, err
    assert f"wrote {out / 'ds_config.json'} and {out / 'plan.json'}" in stdout
    cfg, plan = load(out)
    assert {"model", "cluster", "workload", "plan", "memory", "launch"} <= set(plan)
    assert plan["model"]["name"] == "Qwen3-8B" and plan["model"]["config"]["hidden_size"] == 4096
    assert plan["cluster"] == {"gpu": "H100-SXM", "nodes": 2, "gpus_per_node": 8, "world_size": 16, "hostfile": None}
    assert plan["workload"]["mode"] == "train"
    assert plan["plan"]["zero_stage"] == 3 and plan["plan"]["dp"] == 16 and plan["plan"]["micro_batch"] == 2
    assert plan["memory"]["fits"] is True and plan["memory"]["gpu_total_bytes"] > 0
    cmd = plan["launch"]["command"]
    assert cmd[:2] == ["qwen-ds", "launch"] and str(out / "ds_config.json") in cmd and str(out / "plan.json") in cmd
    assert "--hostfile" in cmd and cmd[-1] == "train"
    assert plan["fp8_recipe"] is None and plan["overrides"] == [] and plan["deepspeed_version"] == "0.19.8"
    assert plan["chosen_by"] == "flags"
    assert cfg["train_batch_size"] == 2 * 4 * 16
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"] == {"enabled": True}
    # written as indented JSON ending with a newline, no temp files left behind
    text = (out / "ds_config.json").read_text()
    assert text.endswith("}\n") and "\n  " in text
    assert sorted(p.name for p in out.iterdir()) == ["ds_config.json", "plan.json"]


def test_json_flag_prints_plan(tmp_path):
    rc, stdout, _ = gen(tmp_path / "o", "--json")
    assert rc == 0
    assert json.loads(stdout) == load(tmp_path / "o")[1]


@pytest.mark.parametrize("extra", [
    [],
    ["--zero", "2", "--offload-optimizer", "cpu"],
    ["--zero", "3", "--offload-optimizer", "nvme", "--offload-param", "nvme", "--nvme-path", "/nvme"],
    ["--zero", "1", "--pp", "2", "--grad-accum", "8"],
    ["--zero", "0", "--precision", "fp32", "-m", "Qwen3-0.6B"],
    ["--zero", "3", "--hpz", "8", "--quantized-weights", "--quantized-gradients"],
    ["--mode", "infer", "--zero", "0", "--tp", "2", "--seq-len", "1024", "--new-tokens", "128"],
    ["--mode", "infer", "--zero", "3", "--offload-param", "cpu", "--seq-len", "1024", "--new-tokens", "128"],
], ids=["z3", "z2-offload", "z3-nvme", "z1-pp2", "z0-fp32", "zeropp", "infer-tp2", "zero-inference"])
def test_no_auto_anywhere(tmp_path, extra):
    out = tmp_path / "o"
    rc, _, err = gen(out, *extra)
    assert rc == 0, err
    for doc in load(out):
        autos = [p for p, v in walk(doc) if v == "auto"]
        assert autos == []
        json.dumps(doc, allow_nan=False)


def test_infer_mode_writes_an_inference_config(tmp_path):
    rc, _, err = gen(tmp_path / "o", "--mode", "infer", "--zero", "0", "--tp", "2", "--seq-len", "1024", "--new-tokens", "128")
    assert rc == 0, err
    cfg, plan = load(tmp_path / "o")
    assert is_inference_config(cfg) and cfg["tensor_parallel"] == {"tp_size": 2}
    assert plan["launch"]["command"][-1] == "infer"


def test_zero_inference_writes_a_zero3_config(tmp_path):
    rc, _, err = gen(tmp_path / "o", "--mode", "infer", "--zero", "3", "--offload-param", "cpu", "--seq-len", "1024", "--new-tokens", "128")
    assert rc == 0, err
    cfg, plan = load(tmp_path / "o")
    assert not is_inference_config(cfg) and "optimizer" not in cfg
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert plan["launch"]["command"][-1] == "infer"


def test_zero_inference_with_tp(tmp_path):
    rc, _, err = gen(tmp_path / "o", "--mode", "infer", "--zero", "3", "--tp", "2", "--seq-len", "1024", "--new-tokens", "128")
    assert rc == 0 or (rc == 2 and "--tp" in err and "rendered config" not in err), err


# --------------------------------------------------------------------------- --force


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "o"
    assert gen(out)[0] == 0
    files = [out / "ds_config.json", out / "plan.json"]
    old = 1_000_000_000  # an mtime far in the past, so an overwrite cannot hide within the clock resolution
    for f in files:
        os.utime(f, ns=(old * 10**9, old * 10**9))
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    rc, _, err = gen(out, "--micro-batch", "4")
    assert rc == 2
    assert "already exist" in err and "--force" in err
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files} == before


def test_refuses_when_only_one_file_exists(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "plan.json").write_text("{}")
    rc, _, err = gen(out)
    assert rc == 2 and "plan.json" in err
    assert (out / "plan.json").read_text() == "{}" and not (out / "ds_config.json").exists()


def test_force_overwrites(tmp_path):
    out = tmp_path / "o"
    assert gen(out)[0] == 0
    before = (out / "ds_config.json").read_bytes()
    rc, _, err = gen(out, "--micro-batch", "4", "--force")
    assert rc == 0, err
    cfg, plan = load(out)
    assert (out / "ds_config.json").read_bytes() != before
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and plan["plan"]["micro_batch"] == 4


# --------------------------------------------------------------------------- --set


def test_set_overrides_applied_as_integers(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--set", "zero_optimization.stage3_max_live_parameters=1e9",
                     "--set", "zero_optimization.stage3_max_reuse_distance=2e8", "--set", "steps_per_print=50")
    assert rc == 0, err
    cfg, plan = load(out)
    z = cfg["zero_optimization"]
    assert z["stage3_max_live_parameters"] == 1000000000 and type(z["stage3_max_live_parameters"]) is int
    assert z["stage3_max_reuse_distance"] == 200000000
    assert '"stage3_max_live_parameters": 1000000000,' in (out / "ds_config.json").read_text()
    assert cfg["steps_per_print"] == 50
    assert plan["overrides"] == ["zero_optimization.stage3_max_live_parameters=1e9",
                                 "zero_optimization.stage3_max_reuse_distance=2e8", "steps_per_print=50"]


def test_set_creates_blocks(tmp_path):
    rc, _, err = gen(tmp_path / "o", "--set", "wandb.enabled=true", "--set", "wandb.project=qwen")
    assert rc == 0, err
    assert load(tmp_path / "o")[0]["wandb"] == {"enabled": True, "project": "qwen"}


@pytest.mark.parametrize("item,match", [
    ("zero_optimization.stage=5", "$.zero_optimization.stage"),
    ("zero_optimization.offload_param.device=cpu", None),  # valid at stage 3: control case, see below
    ("zero_optimisation.stage=1", "unknown top-level key 'zero_optimisation'"),
    ("train_batch_size=7", "$.train_batch_size"),
    ("bf16.enabled=auto", '"auto"'),
    ("zero_optimization.stage3_prefetch_bucket_size=1.5", "not an integer"),
    ("zero_optimization.stage", "expected KEY.PATH=VALUE"),
    ("bf16.enabled.x=1", "not an object"),
])
def test_set_validated_and_nothing_written_on_error(tmp_path, item, match):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--set", item)
    if match is None:
        assert rc == 0, err
        assert load(out)[0]["zero_optimization"]["offload_param"]["device"] == "cpu"
        return
    assert rc == 2, err
    assert match in err
    assert nothing_written(out)
    assert "Traceback" not in err


# --------------------------------------------------------------------------- precision


def test_fp8_on_a100_refused(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--precision", "fp8", base=["gen-config", "-m", "Qwen3-8B", "-g", "A100-80GB"])
    assert rc == 2
    assert "A100-80GB" in err and "FP8" in err
    assert "--precision bf16" in err and "H100" in err  # the alternatives: another precision, or an FP8 GPU
    assert nothing_written(out)


def test_bf16_on_v100_refused(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--precision", "bf16", base=["gen-config", "-m", "Qwen3-0.6B", "-g", "V100-32GB"])
    assert rc == 2 and "V100-32GB" in err and "fp16" in err
    assert nothing_written(out)


def test_fp8_on_h100_renders_bf16_and_a_recipe(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--precision", "fp8")
    assert rc == 0, err
    cfg, plan = load(out)
    assert cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    assert not any(v == "fp8" for _, v in walk(cfg))  # DeepSpeed has no fp8 key
    assert plan["fp8_recipe"] is not None and plan["fp8_recipe"]["deepspeed_dtype"] == "bf16"
    assert plan["plan"]["precision"] == "fp8"


def test_default_precision_on_v100_is_fp16(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, base=["gen-config", "-m", "Qwen3-0.6B", "-g", "V100-32GB"])
    assert rc == 0, err
    cfg, _ = load(out)
    assert cfg["fp16"]["enabled"] is True and "bf16" not in cfg


# --------------------------------------------------------------------------- --template-dir


def copy_templates(tmp_path: Path) -> Path:
    dst = tmp_path / "my_templates"
    shutil.copytree(default_template_dir(), dst, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dst


def test_custom_template_dir_is_used(tmp_path):
    tdir = copy_templates(tmp_path)
    train = tdir / "train.json.j2"
    text = train.read_text()
    assert '"steps_per_print": {{ opts.steps_per_print|tojson }}' in text
    train.write_text(text.replace('"steps_per_print": {{ opts.steps_per_print|tojson }}', '"steps_per_print": 777'))
    out = tmp_path / "o"
    rc, _, err = gen(out, "--template-dir", str(tdir))
    assert rc == 0, err
    assert load(out)[0]["steps_per_print"] == 777
    # the shipped templates are untouched
    rc, _, _ = gen(tmp_path / "o2")
    assert load(tmp_path / "o2")[0]["steps_per_print"] == 10


def test_template_dir_missing_a_template(tmp_path):
    tdir = copy_templates(tmp_path)
    (tdir / "train.json.j2").unlink()
    out = tmp_path / "o"
    rc, _, err = gen(out, "--template-dir", str(tdir))
    assert rc == 2
    assert "no template 'train.json.j2'" in err
    assert nothing_written(out)


def test_template_dir_missing_a_partial(tmp_path):
    tdir = copy_templates(tmp_path)
    (tdir / "partials" / "zero.j2").unlink()
    out = tmp_path / "o"
    rc, _, err = gen(out, "--template-dir", str(tdir))
    assert rc == 2 and "partials/zero.j2" in err and nothing_written(out)


def test_template_dir_that_does_not_exist(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--template-dir", str(tmp_path / "nope"))
    assert rc == 2 and "--template-dir" in err and nothing_written(out)


def test_template_producing_an_invalid_config_is_refused(tmp_path):
    tdir = copy_templates(tmp_path)
    train = tdir / "train.json.j2"
    train.write_text(train.read_text().replace('"steps_per_print": {{ opts.steps_per_print|tojson }}',
                                               '"steps_per_print": 10,\n  "amp": {"enabled": true}'))
    out = tmp_path / "o"
    rc, _, err = gen(out, "--template-dir", str(tdir))
    assert rc == 2 and "$.amp" in err and nothing_written(out)


# --------------------------------------------------------------------------- does not fit


def test_plan_that_does_not_fit_exits_3_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, base=["gen-config", "-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", "--nodes", "1", "--gpus-per-node", "8",
                                *PIN])
    assert rc == 3
    assert "DOES NOT FIT" in err and "nothing written" in err
    assert nothing_written(out) and not out.exists()


def test_no_plan_fits_exits_3_and_writes_nothing(tmp_path):
    """Knobs left open: the planner finds nothing for a 235B model on one A10."""
    out = tmp_path / "o"
    rc, _, err = gen(out, base=["gen-config", "-m", "Qwen3-235B-A22B", "-g", "A10", "--nodes", "1", "--gpus-per-node", "1"])
    assert rc == 3 and "no plan fits" in err
    assert nothing_written(out) and not out.exists()


# --------------------------------------------------------------------------- knobs left open: the planner chooses


def test_planner_fills_open_knobs(tmp_path):
    out = tmp_path / "o"
    rc, stdout, err = gen(out, base=["gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER])
    assert rc == 0, err
    cfg, plan = load(out)
    assert plan["chosen_by"].startswith("planner")
    assert [p for p, v in walk(cfg) if v == "auto"] == []
    p = plan["plan"]
    assert cfg["train_batch_size"] == p["micro_batch"] * p["grad_accum"] * p["dp"]
    assert cfg["zero_optimization"]["stage"] == p["zero_stage"]
    rc, stdout, err = run_cli("validate", str(out / "ds_config.json"), "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER,
                              "--pp", str(p["pp"]), "--no-deepspeed", "--json")
    assert rc == 0, stdout + err


def test_planner_with_pinned_nvme_offload(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--zero", "3", "--offload-param", "nvme", "--nvme-path", "/nvme",
                     base=["gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER])
    assert rc == 0, err


def test_planner_with_zero_inference(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--mode", "infer", "--zero", "3", "--offload-param", "cpu", "--seq-len", "1024", "--new-tokens", "128",
                     base=["gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER])
    assert rc == 0, err
    cfg, plan = load(out)
    assert plan["chosen_by"].startswith("planner")
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "optimizer" not in cfg and [p for p, v in walk(cfg) if v == "auto"] == []


# --------------------------------------------------------------------------- strings stay JSON strings


@pytest.mark.parametrize("path", [
    '/mnt/nv"me',
    "/mnt/nvme\nsecond line",
    '/x", "evil": true, "y": "',
    '/x"}, "train_batch_size": 1, "z": {"a": "',
    "C:\\nvme\\ds",
    "/mnt/{{ 7*7 }}/{% raw %}",
])
def test_nvme_path_ends_up_a_proper_json_string(tmp_path, path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--zero", "3", "--offload-optimizer", "nvme", "--offload-param", "nvme", "--nvme-path", path)
    assert rc == 0, err
    cfg = json.loads((out / "ds_config.json").read_text())
    z = cfg["zero_optimization"]
    assert z["offload_param"]["nvme_path"] == path
    assert z["offload_optimizer"]["nvme_path"] == path
    assert set(z["offload_param"]) == {"device", "nvme_path", "buffer_count", "buffer_size", "max_in_cpu", "pin_memory"}
    assert "evil" not in cfg and "z" not in cfg and "y" not in cfg
    assert cfg["train_batch_size"] == 16  # not replaced by an injected key


def test_nvme_offload_without_path_refused(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--zero", "3", "--offload-param", "nvme")
    assert rc == 2 and "--nvme-path" in err and nothing_written(out)


# --------------------------------------------------------------------------- gen-config output passes validate


def test_generated_config_passes_validate_with_deepspeed(tmp_path):
    pytest.importorskip("deepspeed")
    out = tmp_path / "o"
    assert gen(out, "--zero", "2", "--offload-optimizer", "cpu", "--micro-batch", "2", "--grad-accum", "2")[0] == 0
    rc, stdout, err = run_cli("validate", str(out / "ds_config.json"), "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "2",
                              "--gpus-per-node", "8", "--json")
    assert rc == 0, err
    doc = json.loads(stdout)
    assert doc["ok"] is True and doc["problems"] == [] and doc["deepspeed_checked"] is True
    assert doc["memory"]["fits"] is True


# --------------------------------------------------------------------------- plan.json records its config


def test_plan_records_the_digest_of_its_config(tmp_path):
    out = tmp_path / "o"
    rc, _, err = gen(out, "--set", "zero_optimization.stage3_max_live_parameters=2e8")
    assert rc == 0, err
    cfg, plan = load(out)
    assert plan["ds_config"] == cfg  # the config as written (--set included), to name the keys of a mismatch

    def ints(v):  # integral floats as integers: gradient_clipping 1.0 and 1 are one value to DeepSpeed
        if isinstance(v, dict):
            return {k: ints(x) for k, x in v.items()}
        if isinstance(v, list):
            return [ints(x) for x in v]
        return int(v) if isinstance(v, float) and v.is_integer() else v

    canonical = json.dumps(ints(cfg), sort_keys=True, separators=(",", ":"))
    assert plan["ds_config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest() == config_digest(cfg)


# --------------------------------------------------------------------------- --set is re-estimated

#: the issue's case: the planner picks ZeRO-2, micro 1, no checkpointing at 71.59 GiB of an 80 GB GPU (73.6 usable)
NEAR_LIMIT = ["gen-config", "-m", "Qwen3-8B", "-g", "A100-80GB", "--nodes", "1", "--gpus-per-node", "8", "--zero", "2",
              "--micro-batch", "1", "--no-checkpointing"]
NEAR_LIMIT_VALIDATE = ["-m", "Qwen3-8B", "-g", "A100-80GB", "--nodes", "1", "--gpus-per-node", "8", "--no-checkpointing", "--no-deepspeed"]


def validate_memory(cfg_path: Path, *flags: str) -> dict:
    rc, stdout, err = run_cli("validate", str(cfg_path), *flags, "--json")
    assert rc in (0, 3), err
    return json.loads(stdout)["memory"]


def test_set_that_pushes_the_plan_over_the_limit_exits_3_and_writes_nothing(tmp_path):
    out = tmp_path / "o"
    rc, stdout, _ = gen(out, base=NEAR_LIMIT)
    assert rc == 0 and "71.59 GiB of 80.00 GiB" in stdout
    out2 = tmp_path / "o2"
    rc, stdout, err = gen(out2, "--set", "zero_optimization.reduce_bucket_size=6e8", base=NEAR_LIMIT)
    assert rc == 3, stdout + err
    assert "reduce_bucket_size 16777216 -> 600000000 (--set) needs 73.94 GiB per GPU, over the 73.60 GiB usable" in err
    assert "nothing written" in err and not out2.exists()


def test_set_is_re_estimated_and_agrees_with_validate(tmp_path):
    out = tmp_path / "o"
    rc, stdout, err = gen(out, "--set", "zero_optimization.reduce_bucket_size=1e8", base=NEAR_LIMIT)
    assert rc == 0, err
    assert "--set changed reduce_bucket_size 16777216 -> 100000000" in stdout and "71.92 GiB of 80.00 GiB" in stdout
    _, plan = load(out)
    assert plan["plan"]["reduce_bucket_size"] == 100_000_000
    memory = validate_memory(out / "ds_config.json", *NEAR_LIMIT_VALIDATE)
    assert plan["memory"]["gpu_total_bytes"] == memory["gpu_total_bytes"]
    assert plan["memory"]["terms"] == memory["terms"]


@pytest.mark.parametrize("sets,knob,value", [
    (["zero_optimization.stage=2"], "zero_stage", 2),
    (["zero_optimization.offload_optimizer.device=cpu"], "offload_optimizer", "cpu"),
    (["train_micro_batch_size_per_gpu=2", "train_batch_size=32"], "micro_batch", 2),
    (["zero_optimization.stage3_prefetch_bucket_size=5e8"], "prefetch_bucket_size", 500_000_000),
    (["zero_optimization.stage3_param_persistence_threshold=1e6"], "param_persistence_threshold", 1_000_000),
    (["bf16.enabled=false", "fp16.enabled=true"], "precision", "fp16"),
    (["zero_optimization.zero_quantized_weights=true"], "quantized_weights", True),
    (["tensor_parallel.autotp_size=2"], "tp", 2),
], ids=["stage", "offload", "micro-batch", "prefetch", "persistence", "fp16", "qwZ", "autotp"])
def test_every_memory_knob_set_is_estimated_as_written(tmp_path, sets, knob, value):
    """plan.json's plan and memory are for the config as written; validate gives the same GiB for the file."""
    out = tmp_path / "o"
    rc, stdout, err = gen(out, *[a for item in sets for a in ("--set", item)])
    assert rc == 0, err
    _, plan = load(out)
    assert plan["plan"][knob] == value and f"--set changed {knob} " in stdout
    memory = validate_memory(out / "ds_config.json", "-m", "Qwen3-8B", "-g", "H100-SXM", *CLUSTER, "--no-deepspeed")
    assert plan["memory"]["gpu_total_bytes"] == memory["gpu_total_bytes"]


def test_set_of_a_key_that_does_not_change_memory_keeps_the_plan(tmp_path):
    assert gen(tmp_path / "a")[0] == 0
    rc, stdout, err = gen(tmp_path / "b", "--set", "steps_per_print=50", "--set", "wandb.enabled=false")
    assert rc == 0, err
    assert "--set changed" not in stdout
    (_, a), (_, b) = load(tmp_path / "a"), load(tmp_path / "b")
    assert b["plan"] == a["plan"] and b["memory"] == a["memory"]
    # a plan knob the estimate does not use: recorded, memory unchanged
    rc, stdout, err = gen(tmp_path / "c", "--set", "zero_optimization.stage3_max_live_parameters=2e8")
    assert rc == 0, err
    assert "--set changed max_live_parameters 1000000000 -> 200000000" in stdout
    _, c = load(tmp_path / "c")
    assert c["plan"] == {**a["plan"], "max_live_parameters": 200_000_000} and c["memory"] == a["memory"]


# --------------------------------------------------------------------------- output places: one line, exit 2


def one_line_error(rc: int, err: str) -> str:
    assert rc == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_output_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    line = one_line_error(*gen(tmp_path / "afile" / "out")[::2])
    assert "--output-dir" in line and "Not a directory" in line


def test_output_dir_a_symlink_loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    line = one_line_error(*gen(tmp_path / "loop")[::2])
    assert "symlink" in line and "loop" in line


def test_output_dir_inside_a_symlink_loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    line = one_line_error(*gen(tmp_path / "loop" / "out")[::2])
    assert "cannot create it" in line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into a mode 0555 directory")
def test_output_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line_error(*gen(ro)[::2])
        assert "cannot write into it" in line and "Permission denied" in line
        line = one_line_error(*gen(ro / "sub")[::2])
        assert "cannot create it" in line
    finally:
        ro.chmod(0o755)
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux sysfs (a directory no one can create files in)")
def test_output_dir_where_no_file_can_be_created():
    """sysfs refuses new files even to root: the read-only case a root test run can reach."""
    line = one_line_error(*gen(Path("/sys/kernel"))[::2])
    assert "--output-dir /sys/kernel: cannot write into it" in line
    line = one_line_error(*gen(Path("/sys/kernel/qwen-ds-out"))[::2])
    assert "cannot create it" in line


@pytest.mark.parametrize("name", ["ds_config.json", "plan.json"])
@pytest.mark.parametrize("force", [False, True])
def test_target_that_is_a_directory(tmp_path, name, force):
    out = tmp_path / "o"
    (out / name).mkdir(parents=True)
    rc, _, err = gen(out, *(["--force"] if force else []))
    line = one_line_error(rc, err)
    assert f"{out / name} is a directory" in line  # said first: --force would not help
    assert sorted(p.name for p in out.iterdir()) == [name] and not any((out / name).iterdir())


def test_target_that_is_a_symlink_is_replaced_not_written_through(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    (out / "ds_config.json").symlink_to(elsewhere)
    assert "already exists" in gen(out)[2]
    rc, _, err = gen(out, "--force")
    assert rc == 0, err
    assert elsewhere.read_text() == "{}" and not (out / "ds_config.json").is_symlink()


@pytest.mark.parametrize("consumer,flag,want", [
    ("deepspeed", None, "expandable"),      # qwen-ds launch sets expandable_segments
    ("hf-trainer", None, "default"),        # the Trainer's own launch does not
    ("accelerate", None, "default"),
    ("hf-trainer", "expandable", "expandable"),  # the user exports the variable and says so
    ("deepspeed", "default", "default"),
])
def test_allocator_follows_the_consumer_unless_given(tmp_path, consumer, flag, want):
    """--allocator (issue #16): reserved = allocated x (1 + the allocator's slack in calibration.json), and gen-config
    assumes torch's default allocator for configs the HF Trainer / accelerate launch."""
    from qwen_ds.calibration import constant

    args = ["gen-config", "-m", "Qwen3-0.6B", "-g", "H100-SXM", "--gpus-per-node", "2", "--zero", "2",
            "--micro-batch", "1", "--grad-accum", "1", "--no-checkpointing", "--tp", "1", "--pp", "1",
            "--offload-optimizer", "none", "--for", consumer, "-o", str(tmp_path)]
    rc, _, err = run_cli(*args, *(["--allocator", flag] if flag else []))
    assert rc == 0, err
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["plan"]["allocator"] == want
    slack = constant("fragmentation" if want == "expandable" else "fragmentation_default_allocator")
    mem = doc["memory"]
    assert mem["gpu_reserved_bytes"] == int(mem["gpu_allocated_bytes"] * (1 + slack))
    assert constant("fragmentation_default_allocator") > constant("fragmentation")


def test_allocator_changes_reserved_not_allocated():
    rc1, out1, _ = run_cli("estimate", "-m", "Qwen3-0.6B", "-g", "H100-SXM", "--gpus-per-node", "1", "--zero", "0",
                           "--json")
    rc2, out2, _ = run_cli("estimate", "-m", "Qwen3-0.6B", "-g", "H100-SXM", "--gpus-per-node", "1", "--zero", "0",
                           "--allocator", "default", "--json")
    a, b = json.loads(out1), json.loads(out2)
    assert rc1 == rc2 == 0 and a["plan"]["allocator"] == "expandable" and b["plan"]["allocator"] == "default"
    assert a["gpu_allocated_bytes"] == b["gpu_allocated_bytes"] and b["gpu_reserved_bytes"] > a["gpu_reserved_bytes"]
    rc, _, err = run_cli("estimate", "-m", "Qwen3-0.6B", "-g", "H100-SXM", "--allocator", "cuda-malloc")
    assert rc == 2 and "--allocator" in err
