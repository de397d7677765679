"""Pipeline parallelism (pp 2) in the built-in trainer through the real launcher on CPU (gloo, 2 ranks):
the launch command gen-config prints trains, DeepSpeed's parameter partition is reported, and pp 2 gives
the losses of the data-parallel run of the same seed and global batch."""

import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "DS_ACCELERATOR": "cpu"}
pytestmark = [pytest.mark.slow, pytest.mark.runtime]


def qwen_ds(*args, timeout=600):
    return subprocess.run([PY, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def hostfile(tmp_path_factory):
    f = tmp_path_factory.mktemp("hf") / "hostfile"
    f.write_text("localhost slots=2\n")
    return f


def gen_config(model, hostfile, out, pp, grad_accum, lr="3e-3"):
    p = qwen_ds("gen-config", "-m", model, "-g", "H100-SXM", "--hostfile", str(hostfile), "--pp", str(pp),
                "--zero", "1", "--micro-batch", "1", "--grad-accum", str(grad_accum), "--seq-len", "32", "--tp", "1",
                "--offload-optimizer", "none", "--offload-param", "none", "--checkpointing", "--precision", "fp32",
                "--lr", lr, "--warmup-steps", "2", "--total-steps", "100", "-o", str(out))
    assert p.returncode == 0, p.stderr
    return p.stdout


def printed_launch(stdout: str, run_dir: Path, *train_args: str) -> subprocess.CompletedProcess:
    """Run the `qwen-ds launch ... train` line gen-config printed, with a free port, a run dir and train args."""
    line = next(ln for ln in stdout.splitlines() if ln.startswith("launch: qwen-ds launch "))
    argv = shlex.split(line[len("launch: qwen-ds "):])
    assert argv[-1] == "train", line
    return qwen_ds(*argv[:-1], "--master-port", "auto", "--run-dir", str(run_dir), "train", *train_args)


def records(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-qwen3-moe"])
def test_pp2_trains_with_the_printed_launch_command(model, hostfile, tmp_path):
    out = gen_config(model, hostfile, tmp_path / "cfg", pp=2, grad_accum=4)
    assert '"pipeline"' in (tmp_path / "cfg" / "ds_config.json").read_text()
    metrics = tmp_path / "metrics.jsonl"
    p = printed_launch(out, tmp_path / "run", "--steps", "3", "--metrics-file", str(metrics))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = records(metrics)
    assert [r["step"] for r in recs] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 5.0 < r["loss"] < 8.0 for r in recs), recs  # ln(1024) = 6.93 at init
    # m = 4 micro-batches over p = 2 stages: (p - 1) / (m + p - 1)
    assert all(r["pp"] == 2 and r["bubble_fraction"] == pytest.approx(0.2) for r in recs)
    assert len(re.findall(r"step \d loss \d+\.\d+", p.stdout)) == 3
    m = re.search(r"pipeline: 2 stages x dp 1, layer boundaries \[0, (\d+), 5\] "
                  r".*parameters per stage \[(\d+), (\d+)\]", p.stdout)
    assert m, p.stdout[-3000:]
    from transformers import AutoConfig, AutoModelForCausalLM

    from qwen_ds.models import load_model

    raw = dict(load_model(model).config)
    mt = raw.pop("model_type")
    for k in ("architectures", "torch_dtype"):
        raw.pop(k, None)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **raw))
    total = sum(t.numel() for t in hf.parameters())  # a tied head is counted once here
    stages = [int(m.group(2)), int(m.group(3))]
    tied_copy = raw["vocab_size"] * raw["hidden_size"] if raw.get("tie_word_embeddings") else 0
    assert sum(stages) == total + tied_copy  # the last stage holds its own copy of a tied embedding
    assert max(stages) < 0.6 * sum(stages)  # "parameters" balanced the two stages


def test_pp2_losses_match_the_data_parallel_run(hostfile, tmp_path):
    """2 ranks as dp 2 (grad-accum 2) and as pp 2 (grad-accum 4): the same 4 sequences per step, the same initial
    weights; per-step losses agree (fp32, AdamW)."""
    runs = {}
    for name, pp, ga in (("dp", 1, 2), ("pp", 2, 4)):
        out = gen_config("tiny-qwen3", hostfile, tmp_path / name, pp=pp, grad_accum=ga, lr="3e-4")
        metrics = tmp_path / f"{name}.jsonl"
        p = printed_launch(out, tmp_path / f"run-{name}", "--steps", "6", "--metrics-file", str(metrics))
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        runs[name] = [r["loss"] for r in records(metrics)]
    dp, pp = runs["dp"], runs["pp"]
    assert len(dp) == len(pp) == 6
    assert abs(dp[0] - pp[0]) <= 1e-5 and abs(dp[1] - pp[1]) <= 1e-5, (dp, pp)  # same weights and data
    assert all(abs(a - b) <= 1e-3 for a, b in zip(dp, pp)), list(zip(dp, pp))
