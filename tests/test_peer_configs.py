"""Every LLaMA-Factory and axolotl DeepSpeed config in tests/fixtures gets a verdict, read as the HF Trainer
runs it (their "auto" filled from a LLaMA-Factory training YAML), and an untouched one trains on 2 CPU ranks
under qwen-ds launch with an HF Trainer script."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
YAML = REPO / "examples" / "llamafactory_qwen3_full_sft.yaml"
CLUSTER = ("--model", "Qwen3-8B", "--gpu", "H100-SXM", "--hostfile", str(REPO / "hostfiles" / "a100-2x8"))

#: fixture -> (exit code, what decides it). Qwen3-8B on 2 x 8 H100-80GB, the YAML's batch 1 x GA 8,
#: bf16, cutoff_len 2048, gradient checkpointing on (LLaMA-Factory's default)
VERDICTS = {
    "llamafactory_ds_z0_config.json": (3, "DOES NOT FIT"),  # full replicas: ~16 B/param
    "llamafactory_ds_z2_config.json": (0, "fits"),
    "llamafactory_ds_z2_offload_config.json": (0, "fits"),
    "llamafactory_ds_z2_autotp_config.json": (0, "fits"),  # "_comment": a warning
    "llamafactory_ds_z3_config.json": (0, "fits"),
    "llamafactory_ds_z3_offload_config.json": (0, "fits"),
    "llamafactory_ds_z3_partial_offload_config.json": (0, "fits"),
    "llamafactory_ds_z3_fp8_config.json": (0, "fits"),  # its "fp8" block is no DeepSpeed 0.19.8 key: a warning
    # DeepSpeed 0.19.8's bf16 block forbids LLaMA-Factory's loss-scale keys (checked with its parser)
    "llamafactory_ds_z3_alst_config.json": (2, "$.bf16: Additional properties are not allowed"),
    "readme_llamafactory_z3.json": (0, "fits"),
    "axolotl_zero1.json": (0, "fits"),
    "axolotl_zero2.json": (0, "fits"),
    # the short bucket names axolotl shipped: "auto" the HF Trainer does not fill
    "axolotl_zero3_bf16.json": (2, "the HF Trainer does not fill zero_optimization.prefetch_bucket_size"),
}


def test_every_peer_fixture_is_in_the_table():
    peers = {p.name for p in FIXTURES.glob("*.json") if p.name.startswith(("llamafactory_", "axolotl_", "readme_"))}
    assert peers == set(VERDICTS)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_peer_config_verdict(name):
    rc_want, decides = VERDICTS[name]
    rc, out, err = run_cli("validate", str(FIXTURES / name), *CLUSTER, "--training-args", str(YAML), "--no-deepspeed")
    assert rc == rc_want, out + err
    assert decides in out + err
    if rc != 2:  # a verdict: the "auto" the YAML fills are said, with where they came from
        assert "train_micro_batch_size_per_gpu = 1 (per_device_train_batch_size from --training-args" in out
        assert "gradient_accumulation_steps = 8" in out or '"gradient_accumulation_steps"' not in \
            (FIXTURES / name).read_text()


def test_the_yaml_decides_the_batch_and_the_sequence():
    """cutoff_len and the batch come from the YAML; a flag wins over it."""
    base = ("validate", str(FIXTURES / "llamafactory_ds_z3_config.json"), *CLUSTER, "--no-deepspeed", "--json")
    _, out, _ = run_cli(*base, "--training-args", str(YAML))
    with_yaml = json.loads(out)["memory"]
    _, out, _ = run_cli(*base, "--training-args", str(YAML), "--micro-batch", "4")
    doc = json.loads(out)
    assert doc["memory"]["plan"]["micro_batch"] == 4 and with_yaml["plan"]["micro_batch"] == 1
    assert with_yaml["plan"]["seq_len"] == 2048 and with_yaml["plan"]["checkpointing"] is True
    assert any("per_device_train_batch_size from --micro-batch" in x for x in doc["filled"])
    assert doc["memory"]["gpu_total_bytes"] > with_yaml["gpu_total_bytes"]


def test_estimate_config_equals_validates_verdict():
    args = (*CLUSTER, "--training-args", str(YAML))
    _, out, _ = run_cli("validate", str(FIXTURES / "llamafactory_ds_z2_config.json"), *args, "--no-deepspeed", "--json")
    _, est, err = run_cli("estimate", "--config", str(FIXTURES / "llamafactory_ds_z2_config.json"), *args, "--json")
    assert json.loads(est)["gpu_total_bytes"] == json.loads(out)["memory"]["gpu_total_bytes"], err


def test_bad_training_args_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("per_device_train_batch_size: zero\n")
    rc, _, err = run_cli("validate", str(FIXTURES / "llamafactory_ds_z3_config.json"), *CLUSTER, "--no-deepspeed",
                         "--training-args", str(bad))
    assert rc == 2 and "per_device_train_batch_size is 'zero'" in err and "Traceback" not in err
    bad.write_text("[1, 2]\n")
    rc, _, err = run_cli("validate", str(FIXTURES / "llamafactory_ds_z3_config.json"), *CLUSTER, "--no-deepspeed",
                         "--training-args", str(bad))
    assert rc == 2 and "expected a mapping" in err


@pytest.mark.runtime
@pytest.mark.slow
def test_untouched_llamafactory_config_trains_under_qwen_ds_launch(tmp_path):
    """LLaMA-Factory's ds_z2_config.json as shipped ("auto" everywhere), an HF Trainer script, 2 CPU ranks."""
    pytest.importorskip("deepspeed")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    config = FIXTURES / "llamafactory_ds_z2_config.json"
    args = tmp_path / "training_args.json"
    args.write_text(json.dumps({"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "bf16": True,
                                "learning_rate": 1e-4, "deepspeed": str(config)}))
    proc = subprocess.run([sys.executable, "-m", "qwen_ds.cli", "launch", "--hostfile", str(hostfile), "--config",
                           str(config), "--master-port", "auto", "--run-dir", str(tmp_path / "runs"),
                           str(REPO / "examples" / "hf_trainer_train.py"), "--training-args", str(args),
                           "--model", "tiny-qwen3", "--steps", "3", "--seq-len", "32",
                           "--output-dir", str(tmp_path / "trainer")],
                          capture_output=True, text=True, timeout=480, cwd=REPO, env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "deepspeed: True, world size 2, 3 steps" in proc.stdout
    losses = [float(x) for x in re.findall(r"final loss ([0-9.]+)", proc.stdout)]
    assert losses and all(math.isfinite(v) and v > 0 for v in losses), proc.stdout[-2000:]
