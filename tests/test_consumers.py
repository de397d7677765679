"""gen-config --for hf-trainer / accelerate against the real consumers (transformers 5.x, accelerate, DeepSpeed).

1. TrainingArguments(**training_args.json) runs transformers' HfTrainerDeepSpeedConfig on the written
   config (trainer_config_process, then trainer_config_finalize with the model's hidden size): no mismatch,
   no "auto" left, equal to qwen_ds.consumers.hf_fill and to the --for deepspeed config of the same plan.
2. The accelerate flavour goes through Accelerator.prepare with a real optimizer and runs a step; the
   --for deepspeed flavour (optimizer block) is refused by accelerate.
3. The HF Trainer example (examples/hf_trainer_train.py) trains on 2 CPU ranks under the launcher.
Plans are for --nodes 1 --gpus-per-node 1: TrainingArguments in one CPU process sees a world of 1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli, walk

from qwen_ds.consumers import TrainArgs, hf_fill
from qwen_ds.launch.ports import free_port
from qwen_ds.models import load_model

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

#: id -> gen-config flags (every searched knob pinned, so each flavour renders the same plan)
PLANS = {
    "tiny-z1-ckpt": ("-m", "tiny-qwen3", "-g", "H100-SXM", "--zero", "1", "--micro-batch", "1", "--grad-accum", "1",
                     "--checkpointing", "--seq-len", "32"),
    "tiny-z2-mb2-ga4": ("-m", "tiny-qwen3", "-g", "H100-SXM", "--zero", "2", "--micro-batch", "2", "--grad-accum", "4",
                        "--no-checkpointing", "--seq-len", "32"),
    "tiny-z3-mb2-ga4": ("-m", "tiny-qwen3", "-g", "H100-SXM", "--zero", "3", "--micro-batch", "2", "--grad-accum", "4",
                        "--no-checkpointing", "--seq-len", "32"),
    "tiny-z3-offload-cpu": ("-m", "tiny-qwen3", "-g", "H100-SXM", "--zero", "3", "--offload-optimizer", "cpu",
                            "--micro-batch", "1", "--grad-accum", "2", "--checkpointing", "--seq-len", "32"),
    "tiny-z2-fp16-v100": ("-m", "tiny-qwen3", "-g", "V100-32GB", "--zero", "2", "--precision", "fp16",
                          "--micro-batch", "2", "--grad-accum", "4", "--no-checkpointing", "--seq-len", "32"),
    "8b-z3-offload-cpu": ("-m", "Qwen3-8B", "-g", "H100-SXM", "--zero", "3", "--offload-optimizer", "cpu",
                          "--micro-batch", "1", "--grad-accum", "1", "--checkpointing", "--seq-len", "2048"),
    "8b-z2-mb2-ga4": ("-m", "Qwen3-8B", "-g", "H200", "--zero", "2", "--offload-optimizer", "cpu",
                      "--micro-batch", "2", "--grad-accum", "4", "--checkpointing", "--seq-len", "1024"),
}
PINNED = ("--nodes", "1", "--gpus-per-node", "1", "--offload-param", "none", "--tp", "1", "--pp", "1")
#: keys the HF side sets itself, whatever the config says (accelerate's DeepSpeedPlugin: steps_per_print = inf)
HF_OWN = {"$.steps_per_print"}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """(plan id, consumer) -> output directory of gen-config, made once per module."""
    root = tmp_path_factory.mktemp("consumers")
    made: dict[tuple[str, str], Path] = {}

    def get(plan: str, consumer: str) -> Path:
        if (plan, consumer) not in made:
            out = root / plan / consumer
            flags = PLANS[plan]
            if "--offload-optimizer" not in flags:
                flags += ("--offload-optimizer", "none")
            rc, _, err = run_cli("gen-config", *flags, *PINNED, "--for", consumer, "-o", str(out))
            assert rc == 0, err
            made[plan, consumer] = out
        return made[plan, consumer]

    return get


@pytest.fixture
def hf_state():
    """TrainingArguments sets process-wide state (accelerate's AcceleratorState, transformers' weak reference to
    the DeepSpeed config that makes from_config use zero.Init); cleared after each test."""
    pytest.importorskip("transformers")
    pytest.importorskip("deepspeed")
    import torch._dynamo  # noqa: F401  (before anything DeepSpeed)

    yield
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(reset_partial_state=True)


def hf_filled(out_dir: Path, args: dict, hidden_size: int):
    """transformers' own filling: TrainingArguments (trainer_config_process), then trainer_config_finalize."""
    from transformers import TrainingArguments

    ta = TrainingArguments(output_dir=str(out_dir / "hf-out"), report_to=[], use_cpu=True, **args)
    assert ta.world_size == 1
    hf = ta.hf_deepspeed_config
    hf.trainer_config_finalize(ta, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden_size)),
                               num_training_steps=args["max_steps"])
    return hf


def leaves(cfg: dict) -> dict[str, object]:
    return {path: v for path, v in walk(cfg) if not isinstance(v, dict)}


def read(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


@pytest.mark.runtime
@pytest.mark.parametrize("plan", sorted(PLANS))
def test_hf_trainer_fills_the_written_config_as_hf_fill_and_as_the_deepspeed_flavour(plan, generated, hf_state):
    out = generated(plan, "hf-trainer")
    written, args = read(out, "ds_config.json"), read(out, "training_args.json")
    assert args["deepspeed"] == str(out / "ds_config.json")
    assert "auto" in json.dumps(written)  # the HF flavour leaves the filling to HF
    hidden = load_model(PLANS[plan][1]).hidden_size

    hf = hf_filled(out, args, hidden)  # raises ValueError on any mismatch
    assert hf.mismatches == []
    filled = hf.config
    assert [p for p, v in walk(filled) if v == "auto"] == []

    ours = hf_fill(written, TrainArgs(**{f.name: args[f.name] for f in dataclasses.fields(TrainArgs)}),
                   world=1, hidden_size=hidden)
    theirs, mine = leaves(filled), leaves(ours)
    assert set(theirs) == set(mine)
    assert {p: (theirs[p], mine[p]) for p in theirs if theirs[p] != mine[p]} == {
        p: (theirs[p], mine[p]) for p in HF_OWN if p in theirs and theirs[p] != mine[p]}
    assert filled["steps_per_print"] == math.inf

    ds = leaves(read(generated(plan, "deepspeed"), "ds_config.json"))
    assert {p for p in ds if p not in theirs} == {p for p in ds if p.startswith("$.activation_checkpointing")}
    assert set(theirs) - set(ds) == set()
    assert {p: (theirs[p], ds[p]) for p in theirs if p not in HF_OWN and theirs[p] != ds[p]} == {}
    # and what the estimate assumed is what HF runs
    assert filled["train_micro_batch_size_per_gpu"] == int(PLANS[plan][PLANS[plan].index("--micro-batch") + 1])
    assert filled["gradient_accumulation_steps"] == int(PLANS[plan][PLANS[plan].index("--grad-accum") + 1])
    assert args["gradient_checkpointing"] is ("--checkpointing" in PLANS[plan])
    assert filled["fp16" if "fp16" in PLANS[plan] else "bf16"]["enabled"] is True


@pytest.mark.runtime
def test_concrete_batch_that_differs_from_training_args_is_a_hf_mismatch(generated, hf_state):
    """Why the HF flavour exists: the --for deepspeed config passes with the plan's arguments and is refused
    by transformers once the arguments say another micro-batch."""
    plan = "tiny-z3-mb2-ga4"
    args = read(generated(plan, "hf-trainer"), "training_args.json")
    ds_dir = generated(plan, "deepspeed")
    args["deepspeed"] = str(ds_dir / "ds_config.json")
    assert hf_filled(ds_dir, args, 64).mismatches == []  # the control: same plan, same values

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    args["per_device_train_batch_size"] = 3
    with pytest.raises(ValueError) as exc:
        hf_filled(ds_dir, args, 64)
    text = str(exc.value)
    assert "mismatch TrainingArguments" in text
    assert "ds train_micro_batch_size_per_gpu=2 vs hf per_device_train_batch_size=3" in text
    assert "ds train_batch_size=8 vs hf train_batch_size (calculated)=12" in text


def run_example(script: str, *args: str, world: int = 1, timeout: int = 420) -> subprocess.CompletedProcess:
    """An example in a fresh process with what DeepSpeed needs for one CPU rank (without RANK & co. it tries
    MPI discovery)."""
    from qwen_ds.launch.run import clear_shm_buffers

    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env=env)
    finally:
        clear_shm_buffers("127.0.0.1", port)


def final_loss(stdout: str) -> float:
    found = re.findall(r"final loss (\S+)", stdout)  # qwen-ds launch prefixes rank lines
    assert found, stdout[-2000:]
    return float(found[-1])


@pytest.mark.runtime
@pytest.mark.slow
def test_accelerate_flavour_prepares_with_the_loops_optimizer_and_steps(generated):
    pytest.importorskip("accelerate")
    pytest.importorskip("deepspeed")
    out = generated("tiny-z3-mb2-ga4", "accelerate")
    cfg = read(out, "ds_config.json")
    assert "optimizer" not in cfg and "scheduler" not in cfg and "auto" not in json.dumps(cfg)
    proc = run_example("accelerate_train.py", "--config", str(out / "ds_config.json"), "--training-args",
                       str(out / "training_args.json"), "--model", "tiny-qwen3", "--steps", "1", "--seq-len", "32")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "deepspeed: DeepSpeedEngine, world size 1, 1 steps x 4 micro-batches of 2" in proc.stdout
    loss = final_loss(proc.stdout)
    assert math.isfinite(loss) and loss > 0


@pytest.mark.runtime
@pytest.mark.slow
def test_accelerate_refuses_the_deepspeed_flavour_with_its_optimizer_block(generated):
    pytest.importorskip("accelerate")
    pytest.importorskip("deepspeed")
    out = generated("tiny-z3-mb2-ga4", "deepspeed")
    assert "optimizer" in read(out, "ds_config.json")
    args = generated("tiny-z3-mb2-ga4", "accelerate") / "training_args.json"
    proc = run_example("accelerate_train.py", "--config", str(out / "ds_config.json"), "--training-args", str(args),
                       "--model", "tiny-qwen3", "--steps", "1", "--seq-len", "32")
    assert proc.returncode != 0
    assert "You cannot specify an optimizer in the config file and in the code" in proc.stderr


# --------------------------------------------------------------------------- 2 CPU ranks, the HF Trainer example


def hf_trainer_config(root: Path, *extra: str) -> tuple[Path, Path]:
    """gen-config -m tiny-qwen3 --for hf-trainer for a 2-slot localhost hostfile (ZeRO-3, micro-batch 2) in root,
    with ``extra`` flags: (hostfile, output directory)."""
    hostfile = root / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = root / "run"
    rc, _, err = run_cli("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hostfile), "--zero", "3",
                         "--micro-batch", "2", "--grad-accum", "1", "--checkpointing", "--offload-optimizer", "none",
                         "--offload-param", "none", "--tp", "1", "--pp", "1", "--seq-len", "32", *extra,
                         "--for", "hf-trainer", "-o", str(out))
    assert rc == 0, err
    return hostfile, out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return hf_trainer_config(tmp_path_factory.mktemp("pair"))


def trainer_args(out: Path) -> list[str]:
    return [str(EXAMPLES / "hf_trainer_train.py"), "--training-args", str(out / "training_args.json"),
            "--model", "tiny-qwen3", "--steps", "3", "--seq-len", "32", "--output-dir", str(out.parent / "trainer")]


def assert_trained_on_two_ranks(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "deepspeed: True, world size 2, 3 steps" in proc.stdout
    loss = final_loss(proc.stdout)
    assert math.isfinite(loss) and loss > 0


@pytest.mark.runtime
@pytest.mark.slow
def test_hf_trainer_example_on_two_cpu_ranks_under_deepspeeds_launcher(pair):
    pytest.importorskip("deepspeed")
    from qwen_ds.launch.run import clear_shm_buffers

    hostfile, out = pair
    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    try:
        proc = subprocess.run([sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile),
                               "--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", port,
                               *trainer_args(out)], capture_output=True, text=True, timeout=480, cwd=REPO, env=env)
    finally:
        clear_shm_buffers("127.0.0.1", port)
    assert_trained_on_two_ranks(proc)


@pytest.mark.runtime
@pytest.mark.slow
def test_hf_trainer_example_on_two_cpu_ranks_under_qwen_ds_launch(pair):
    pytest.importorskip("deepspeed")
    assert_trained_on_two_ranks(launch_trainer(*pair))


def launch_trainer(hostfile: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The HF Trainer example under `qwen-ds launch` with gen-config's config and plan, on 2 CPU ranks."""
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", "launch", "--hostfile", str(hostfile), "--config",
                           str(out / "ds_config.json"), "--plan", str(out / "plan.json"), "--master-port", "auto",
                           "--run-dir", str(out.parent / "runs"), *trainer_args(out), *extra],
                          capture_output=True, text=True, timeout=480, cwd=REPO,
                          env=dict(os.environ, DS_ACCELERATOR="cpu"))


@pytest.mark.runtime
@pytest.mark.slow
def test_hf_trainer_trains_a_peft_lora_model_under_the_lora_plans_config(tmp_path):
    """Issue #17: gen-config --finetune lora --for hf-trainer (ZeRO-3) under the HF Trainer with a peft model, 2 CPU
    ranks: DeepSpeed accepts the Trainer's optimizer over the adapters (zero_allow_untested_optimizer), and the
    parameters trained are peft's adapters, the estimator's count."""
    pytest.importorskip("deepspeed")
    pytest.importorskip("peft")
    from qwen_ds.models import load_model
    from qwen_ds.models.finetune import lora_params

    hostfile, out = hf_trainer_config(tmp_path, "--finetune", "lora", "--lora-rank", "8")
    assert read(out, "ds_config.json")["zero_allow_untested_optimizer"] is True
    proc = launch_trainer(hostfile, out, "--lora-rank", "8")
    assert_trained_on_two_ranks(proc)
    assert f"{lora_params(load_model('tiny-qwen3'), 'all-linear', 8):,} parameters trained" in proc.stdout
