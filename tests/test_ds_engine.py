"""Rendered configs run a REAL deepspeed.initialize + one forward/backward/step of tiny-qwen3 on CPU.

World size 1 (rendered for Cluster(H100-SXM, 1 node, 1 GPU)), gloo, DS_ACCELERATOR=cpu; one subprocess
per config (tests/ds_step_probe.py) so DeepSpeed's global state never leaks between tests. The first
run JIT-builds DeepSpeed's CPU ops (shm comm, CPU Adam for offload): about a minute each, cached after.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.models import load_model
from qwen_ds.knobs import Plan, Workload
from qwen_ds.render import render
from qwen_ds.validate import Context, validate_config
from qwen_ds.launch.ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "ds_step_probe.py"
SEQ = 16


@functools.lru_cache(maxsize=1)
def _cpu_has_fp16() -> bool:
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def _run_step(tmp_path: Path, plan: Plan) -> dict:
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    model = load_model("tiny-qwen3")
    cluster = Cluster(get_gpu("H100-SXM"), 1, 1)
    cfg = render(model, cluster, Workload(seq_len=SEQ), plan)
    assert cfg["train_batch_size"] == plan.micro_batch * plan.grad_accum
    errors = [p for p in validate_config(cfg, Context(world_size=1, gpus_per_node=1, gpu=cluster.gpu, model=model))
              if p.severity == "error"]
    assert errors == []
    path = tmp_path / "ds_config.json"
    path.write_text(json.dumps(cfg, indent=2))
    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", LOCAL_SIZE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    from qwen_ds.launch.run import clear_shm_buffers

    try:
        proc = subprocess.run([sys.executable, str(PROBE), str(path), "--model", "tiny-qwen3", "--seq-len", str(SEQ)],
                              capture_output=True, text=True, timeout=420, cwd=REPO, env=env)
    finally:
        clear_shm_buffers("127.0.0.1", port)  # DeepSpeed's CPU all-reduce buffer (69 MB) is never removed
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DS_STEP_RESULT=")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    result = json.loads(lines[-1].split("=", 1)[1])
    assert result["finite"] is True and result["loss"] > 0
    assert result["global_steps"] == 1  # the optimizer step ran (no fp16 overflow skip)
    assert result["zero_stage"] == plan.zero_stage
    assert result["offload_optimizer"] == plan.offload_optimizer
    assert result["offload_param"] == plan.offload_param
    return result


def test_zero3_bf16(tmp_path):
    r = _run_step(tmp_path, Plan(zero_stage=3, precision="bf16"))
    assert r["bf16"] is True and r["fp16"] is False and r["param_dtype"] == "torch.bfloat16"
    import importlib.util

    # HfDeepSpeedConfig needs accelerate; the probe falls back to deepspeed.zero.Init without it
    expected = "HfDeepSpeedConfig" if importlib.util.find_spec("accelerate") else "deepspeed.zero.Init"
    assert r["zero3_init"] == expected
    if expected == "HfDeepSpeedConfig":
        assert r["loss"] < 10  # HF's _init_weights ran under zero.Init: about ln(vocab 1024) = 6.9 at step 0


def test_zero3_cpu_offload_optimizer_and_params(tmp_path):
    r = _run_step(tmp_path, Plan(zero_stage=3, precision="bf16", offload_optimizer="cpu", offload_param="cpu"))
    assert r["bf16"] is True


def test_zero2_fp16(tmp_path):
    if not _cpu_has_fp16():
        pytest.skip("this CPU has no fp16 support in oneDNN (torch.ops.mkldnn._is_mkldnn_fp16_supported() is False); "
                    "DeepSpeed's CPU accelerator refuses fp16")
    r = _run_step(tmp_path, Plan(zero_stage=2, precision="fp16"))
    assert r["fp16"] is True and r["bf16"] is False


def test_zero1_fp32(tmp_path):
    r = _run_step(tmp_path, Plan(zero_stage=1, precision="fp32"))
    assert r["bf16"] is False and r["fp16"] is False and r["param_dtype"] == "torch.float32"


def test_zero2_bf16_cpu_offload_optimizer(tmp_path):
    """Stage 1/2 with optimizer offload renders round_robin_gradients: true; DeepSpeed runs it."""
    r = _run_step(tmp_path, Plan(zero_stage=2, precision="bf16", offload_optimizer="cpu"))
    assert r["bf16"] is True


def test_zero3_params_only_cpu_offload(tmp_path):
    """The planner offers ZeRO-3 with only the 16-bit params on CPU (optimizer states on the GPU), e.g. its
    first choice for Qwen3-32B on 1 x 8 H100: DeepSpeed runs it."""
    r = _run_step(tmp_path, Plan(zero_stage=3, precision="bf16", offload_optimizer="none", offload_param="cpu"))
    assert r["bf16"] is True and r["loss"] < 10
