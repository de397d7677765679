"""Every command over a table of bad inputs: exit 2, exactly one line on stderr, never a traceback,
and nothing written. Each row was a traceback, a silent wrong answer, or a hang before (issue #11 §5)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIZE = ["-m", "tiny-qwen3", "-g", "H100-SXM"]
CFG = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
       "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}


def files(tmp: Path) -> dict[str, str]:
    """Fixtures a row may name as {name}: real files, directories and links in tmp."""
    (tmp / "afile").write_text("x")
    (tmp / "loop").symlink_to(tmp / "loop")
    (tmp / "cfgdir").mkdir()
    (tmp / "cfgdir" / "ds_config.json").mkdir()
    (tmp / "ds.json").write_text(json.dumps(CFG))
    (tmp / "hf").write_text("localhost slots=8\n")
    (tmp / "hf2").write_text("w0 slots=8\nw1 slots=8\n")
    (tmp / "plan_types.json").write_text(json.dumps({"plan": {"pp": "two", "zero_stage": [3]}, "cluster": {"world_size": "8"}}))
    (tmp / "plan_list.json").write_text("[1, 2]")
    (tmp / "latin1.json").write_bytes(b'{"train_batch_size": 8, "x": "\xe9"}')
    (tmp / "nan.json").write_text('{"train_batch_size": NaN}')
    (tmp / "model_dir").mkdir()
    (tmp / "model_dir" / "config.json").mkdir()  # unreadable as a file (root ignores chmod 000)
    (tmp / "model_list.json").write_text("[]")
    (tmp / "model_bad.json").write_text("{not json")
    (tmp / "model_layers.json").write_text(json.dumps({"model_type": "qwen3", "num_hidden_layers": 10 ** 12, "hidden_size": 64,
                                                        "intermediate_size": 128, "num_attention_heads": 2,
                                                        "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 256}))
    return {p.name: str(p) for p in tmp.iterdir()} | {"tmp": str(tmp)}


CASES = {
    # model and GPU names
    "estimate -m ''": ["estimate", "-m", "", "-g", "H100-SXM"],
    "estimate -m blank": ["estimate", "-m", "   ", "-g", "H100-SXM"],
    "estimate -m unknown": ["estimate", "-m", "no-such-model", "-g", "H100-SXM"],
    "estimate -m /dev/zero": ["estimate", "-m", "/dev/zero", "-g", "H100-SXM"],
    "estimate -m dir with config.json a directory": ["estimate", "-m", "{model_dir}", "-g", "H100-SXM"],
    "estimate -m config.json a list": ["estimate", "-m", "{model_list.json}", "-g", "H100-SXM"],
    "estimate -m config.json not JSON": ["estimate", "-m", "{model_bad.json}", "-g", "H100-SXM"],
    "estimate -m 1e12 layers": ["estimate", "-m", "{model_layers.json}", "-g", "H100-SXM"],
    "estimate -g A100 (ambiguous)": ["estimate", "-m", "tiny-qwen3", "-g", "A100"],
    "estimate -g V100 (ambiguous)": ["estimate", "-m", "tiny-qwen3", "-g", "V100"],
    "estimate -g unknown": ["estimate", "-m", "tiny-qwen3", "-g", "B999"],
    "estimate --micro-batch 0": ["estimate", *SIZE, "--micro-batch", "0"],
    "estimate --seq-len -1": ["estimate", *SIZE, "--seq-len", "-1"],
    "gen-config --mode infer --pp 2": ["gen-config", *SIZE, "--mode", "infer", "--pp", "2", "-o", "{tmp}/o3"],
    "plan --global-batch 7 (no layout divides it)": ["plan", *SIZE, "--global-batch", "7"],
    "validate --training-args not a mapping": ["validate", "{ds.json}", "--training-args", "{plan_list.json}",
                                                "--no-deepspeed"],
    # planner numbers
    "plan --compute-efficiency 0": ["plan", *SIZE, "--compute-efficiency", "0"],
    "plan --compute-efficiency nan": ["plan", *SIZE, "--compute-efficiency", "nan"],
    "plan --inter-node-gbps 0": ["plan", *SIZE, "--nodes", "2", "--inter-node-gbps", "0"],
    "plan --inter-node-gbps inf": ["plan", *SIZE, "--nodes", "2", "--inter-node-gbps", "inf"],
    "plan --cpu-mem-per-node nan": ["plan", *SIZE, "--cpu-mem-per-node", "nan"],
    "plan --cpu-mem-per-node -1": ["plan", *SIZE, "--cpu-mem-per-node", "-1"],
    "plan --headroom nan": ["plan", *SIZE, "--headroom", "nan"],
    "plan --chart chart.txt": ["plan", *SIZE, "--chart", "{tmp}/chart.txt"],
    "plan --chart over a file": ["plan", *SIZE, "--chart", "{afile}"],
    # gen-config numbers and output places
    "gen-config --lr nan": ["gen-config", *SIZE, "--lr", "nan", "-o", "{tmp}/o1"],
    "gen-config --lr inf": ["gen-config", *SIZE, "--lr", "inf", "-o", "{tmp}/o1"],
    "gen-config --gradient-clipping nan": ["gen-config", *SIZE, "--gradient-clipping", "nan", "-o", "{tmp}/o1"],
    "gen-config all knobs pinned, --compute-efficiency nan": [
        "gen-config", *SIZE, "--zero", "3", "--offload-optimizer", "none", "--offload-param", "none", "--micro-batch", "1",
        "--grad-accum", "1", "--checkpointing", "--tp", "1", "--pp", "1", "--compute-efficiency", "nan", "-o", "{tmp}/o1"],
    "gen-config --warmup-steps -1": ["gen-config", *SIZE, "--warmup-steps", "-1", "-o", "{tmp}/o1"],
    "gen-config --total-steps < warmup": ["gen-config", *SIZE, "--warmup-steps", "100", "--total-steps", "10", "-o", "{tmp}/o1"],
    "gen-config -o under a file": ["gen-config", *SIZE, "-o", "{afile}/out"],
    "gen-config -o a symlink loop": ["gen-config", *SIZE, "-o", "{loop}"],
    "gen-config -o read-only place": ["gen-config", *SIZE, "-o", "/proc/qwen-ds-out"],
    "gen-config -o where ds_config.json is a dir": ["gen-config", *SIZE, "-o", "{cfgdir}", "--force"],
    # validate
    "validate -m ''": ["validate", "{ds.json}", "-m", ""],
    "validate -g ''": ["validate", "{ds.json}", "-g", ""],
    "hostfile from-slurm -o an existing file": ["hostfile", "from-slurm", "--nodelist", "n[1-2]", "--gpus-per-node", "8", "-o",
                                                "{afile}"],
    "validate missing file": ["validate", "{tmp}/missing.json"],
    "validate a directory": ["validate", "{tmp}"],
    "validate /dev/zero": ["validate", "/dev/zero"],
    "validate non-UTF-8": ["validate", "{latin1.json}"],
    "validate --plan with wrong types": ["validate", "{ds.json}", "--plan", "{plan_types.json}"],
    "validate --plan a list": ["validate", "{ds.json}", "--plan", "{plan_list.json}"],
    # hostfiles
    "hostfile check missing": ["hostfile", "check", "{tmp}/nohost"],
    "hostfile check /dev/zero": ["hostfile", "check", "/dev/zero"],
    "hostfile from-slurm -o afile/x": ["hostfile", "from-slurm", "--nodelist", "n[1-2]", "--gpus-per-node", "8", "-o", "{afile}/x"],
    # launch
    "launch --env non-UTF-8": ["launch", "--hostfile", "{hf}", "--config", "{ds.json}", "--env", "A=\udcff", "--dry-run", "train"],
    "launch --env RANK": ["launch", "--hostfile", "{hf}", "--config", "{ds.json}", "--env", "RANK=1", "--dry-run", "train"],
    "launch --master-addr $()": ["launch", "--hostfile", "{hf2}", "--config", "{ds.json}", "--master-addr", "$(id)", "--dry-run",
                                 "train"],
    "launch --plan with wrong types": ["launch", "--hostfile", "{hf}", "--config", "{ds.json}", "--plan", "{plan_types.json}",
                                       "--dry-run", "train"],
    "launch --hostfile missing": ["launch", "--hostfile", "{tmp}/nohost", "--config", "{ds.json}", "train"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path):
    names = files(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args = [re.sub(r"\{([\w.]+)\}", lambda m: names[m[1]], a) for a in CASES[name]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, cwd=tmp_path, env=env, timeout=300)
    err = p.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err[-2000:]
    assert p.returncode == 2, f"exit {p.returncode}\n{err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error"), err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "a refused command wrote something"
