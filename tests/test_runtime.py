"""Built-in runtime through the real launcher on CPU (gloo, 2 ranks): training of the three Qwen
families, resume reproducing the uninterrupted losses, and inference equal to single-process HF."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = {**os.environ, "DS_ACCELERATOR": "cpu"}
pytestmark = pytest.mark.slow


def qwen_ds(*args, timeout=600):
    return subprocess.run([PY, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def hostfile(tmp_path_factory):
    f = tmp_path_factory.mktemp("hf") / "hostfile"
    f.write_text("localhost slots=2\n")
    return f


def gen_train_config(model, hostfile, out, seq=64, precision="fp32"):
    p = qwen_ds("gen-config", "-m", model, "-g", "H100-SXM", "--hostfile", str(hostfile), "--zero", "3", "--micro-batch", "2",
                "--grad-accum", "1", "--no-checkpointing", "--offload-optimizer", "none", "--offload-param", "none", "--tp", "1",
                "--pp", "1", "--seq-len", str(seq), "--loss", "chunked", "--precision", precision, "--lr", "3e-3", "--warmup-steps", "2",
                "--total-steps", "100", "-o", str(out))
    assert p.returncode == 0, p.stderr
    return out


def launch_train(cfg, hostfile, run, *train_args):
    return qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--plan", str(cfg / "plan.json"),
                   "--master-port", "auto", "--run-dir", str(run), "train", *train_args)


def losses(metrics: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]


@pytest.mark.parametrize("model", ["tiny-qwen3"])  # MoE and Next: tests/test_parallel_train.py's ZeRO-3 dp runs
def test_train_20_steps_loss_decreases(model, hostfile, tmp_path):
    cfg = gen_train_config(model, hostfile, tmp_path / "cfg")
    metrics = tmp_path / "metrics.jsonl"
    p = launch_train(cfg, hostfile, tmp_path / "run", "--steps", "20", "--metrics-file", str(metrics))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 21))
    ls = [r["loss"] for r in recs]
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.05, ls
    assert all(r["tokens_per_s"] > 0 and r["tflops_per_gpu"] > 0 for r in recs)


def test_fp8_plan_trains_under_zero3(hostfile, tmp_path):
    """An FP8 plan (bf16 DeepSpeed config + torchao float8 recipe) through launch: ZeRO-3 partitions the
    Float8Linear weights like any other and the loss falls (torch's CPU float8 kernels stand in for Hopper's)."""
    pytest.importorskip("torchao")
    cfg = gen_train_config("tiny-qwen3", hostfile, tmp_path / "cfg", precision="fp8")
    plan = json.loads((cfg / "plan.json").read_text())
    assert plan["plan"]["precision"] == "fp8" and json.loads((cfg / "ds_config.json").read_text())["bf16"]["enabled"]
    metrics = tmp_path / "metrics.jsonl"
    p = launch_train(cfg, hostfile, tmp_path / "run", "--steps", "12", "--metrics-file", str(metrics))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "FP8: 14 Linear layers converted to torchao float8 training on cpu" in p.stdout
    ls = losses(metrics)
    assert len(ls) == 12 and sum(ls[-3:]) / 3 < sum(ls[:3]) / 3, ls


def test_resume_reproduces_the_uninterrupted_losses(hostfile, tmp_path):
    """ZeRO-3: steps 11-20 resumed from the step-10 checkpoint of a 20-step run are that run's steps 11-20, and a
    crashed run's metrics lines past the checkpoint (and a line cut short) are dropped. (A new run refusing a
    --save-dir that holds a checkpoint is tests/test_runtime_units.py's.)"""
    cfg = gen_train_config("tiny-qwen3", hostfile, tmp_path / "cfg")
    full, ck = tmp_path / "full.jsonl", tmp_path / "ck"
    p = launch_train(cfg, hostfile, tmp_path / "r1", "--steps", "20", "--metrics-file", str(full), "--save-dir", str(ck),
                     "--save-every", "10")
    assert p.returncode == 0, p.stderr[-3000:]
    part = tmp_path / "part.jsonl"  # what a run that crashed after step 12 (checkpoint at 10) left
    part.write_text("".join(full.read_text().splitlines(keepends=True)[:10]) + '{"step": 11, "loss": 9.9}\n{"step": 12, "lo')
    p = launch_train(cfg, hostfile, tmp_path / "r2", "--steps", "20", "--metrics-file", str(part), "--save-dir", str(ck),
                     "--resume-from", "step10")
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = losses(full), losses(part)
    assert len(a) == len(b) == 20 and [json.loads(ln)["step"] for ln in part.read_text().splitlines()] == list(range(1, 21))
    for x, y in zip(a[10:], b[10:]):
        assert abs(x - y) <= 1e-5 * abs(x), (a[10:], b[10:])
    hf = ck / "hf"
    assert (hf / "config.json").is_file() and any(hf.glob("*.bin")) or any(hf.glob("*.safetensors"))


REF_SCRIPT = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[3])
from transformers import AutoConfig, AutoModelForCausalLM
from qwen_ds.models import load_model
name, out = sys.argv[1], sys.argv[2]
raw = dict(load_model(name).config); mt = raw.pop("model_type")
for k in ("architectures", "torch_dtype"): raw.pop(k, None)
cfg = AutoConfig.for_model(mt, **raw); cfg.initializer_range = 0.5   # a random model with varied greedy outputs
torch.manual_seed(0)
AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
prompts = [[1, 5, 9, 13, 17], [100, 3, 7], [42, 43, 44, 45, 46, 47], [900, 800], [7]]
with open(out + "/prompts.jsonl", "w") as fh:
    for p in prompts: fh.write(json.dumps({"input_ids": p}) + "\n")
m = AutoModelForCausalLM.from_pretrained(out); m.eval()
ref = []
for p in prompts:
    ids = torch.tensor([p])
    o = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0)
    ref.append(o[0, len(p):].tolist())
json.dump(ref, open(out + "/ref.json", "w"))
'''


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "w"
    p = subprocess.run([PY, "-c", REF_SCRIPT, "tiny-qwen3", str(out), str(ROOT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    ref = json.loads((out / "ref.json").read_text())
    assert len({tuple(r) for r in ref}) == len(ref)  # varied outputs: the comparison means something
    return out, ref


@pytest.mark.parametrize("engine", ["zero-inference", "autotp"])
def test_infer_two_ranks_equals_single_process_generate(engine, reference, hostfile, tmp_path):
    weights, ref = reference
    knobs = ["--zero", "3", "--offload-param", "cpu", "--tp", "1"] if engine == "zero-inference" else \
        ["--zero", "0", "--offload-param", "none", "--tp", "2"]
    p = qwen_ds("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hostfile), "--mode", "infer", *knobs,
                "--micro-batch", "1", "--pp", "1", "--precision", "fp32", "--seq-len", "8", "--new-tokens", "8", "-o", str(tmp_path / "cfg"))
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out.jsonl"
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(tmp_path / "cfg" / "ds_config.json"), "--plan",
                str(tmp_path / "cfg" / "plan.json"), "--master-port", "auto", "--run-dir", str(tmp_path / "run"), "infer",
                "--weights", str(weights), "--prompts", str(weights / "prompts.jsonl"), "--max-new-tokens", "8", "--output", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in recs] == list(range(len(ref)))
    assert [r["output_ids"] for r in recs] == ref
    assert all(r["ttft_s"] > 0 and r["tokens_per_s"] > 0 for r in recs)


def autotp_model(tmp_path, base, **changes):
    """A config.json of a tiny preset with dims DeepSpeed's AutoTP splits evenly (its 64-element grain)."""
    from qwen_ds.models import load_model

    cfg = {**dict(load_model(base).config), "tie_word_embeddings": False, "intermediate_size": 256, **changes}
    path = tmp_path / f"{base}-autotp.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("base", ["tiny-qwen3", "tiny-qwen3-moe"])
def test_autotp_shards_what_the_estimator_says(base, hostfile, tmp_path):
    """The weights a rank really holds after DeepSpeed's AutoTP (projections split, embedding, head and the
    fused MoE experts whole) equal the estimator's count in plan.json."""
    model = autotp_model(tmp_path, base)
    p = qwen_ds("gen-config", "-m", str(model), "-g", "H100-SXM", "--hostfile", str(hostfile), "--mode", "infer", "--zero", "0",
                "--offload-param", "none", "--tp", "2", "--micro-batch", "1", "--pp", "1", "--precision", "fp32", "--seq-len", "8",
                "--new-tokens", "2", "-o", str(tmp_path / "cfg"))
    assert p.returncode == 0, p.stderr
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"input_ids": [1, 2, 3]}\n')
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(tmp_path / "cfg" / "ds_config.json"), "--plan",
                str(tmp_path / "cfg" / "plan.json"), "--master-port", "auto", "--run-dir", str(tmp_path / "run"), "infer",
                "--prompts", str(prompts), "--max-new-tokens", "2", "--output", str(tmp_path / "out.jsonl"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    line = next(ln for ln in p.stdout.splitlines() if "weights on rank 0:" in ln)
    real, planned = (int(x.replace(",", "")) for x in __import__("re").findall(r"([\d,]+) parameters.*\(plan: ([\d,]+)\)", line)[0])
    assert real == planned, line
    full = json.loads((tmp_path / "cfg" / "plan.json").read_text())["memory"]["total_params"]
    assert real < full  # something was split
    if base == "tiny-qwen3-moe":
        assert real > full // 2  # the experts were not


def test_autotp_refuses_qwen3_next(hostfile, tmp_path):
    p = qwen_ds("gen-config", "-m", "tiny-qwen3-next", "-g", "H100-SXM", "--hostfile", str(hostfile), "--mode", "infer",
                "--zero", "0", "--offload-param", "none", "--tp", "2", "--pp", "1", "-o", str(tmp_path / "next"))
    assert p.returncode == 2 and "--tp 1 with --zero 3" in p.stderr
    # a hand-made AutoTP config with the model overridden: the runtime stops before building anything
    p = qwen_ds("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hostfile), "--mode", "infer", "--zero", "0",
                "--offload-param", "none", "--tp", "2", "--pp", "1", "--precision", "fp32", "-o", str(tmp_path / "cfg"))
    assert p.returncode == 0, p.stderr
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"input_ids": [1, 2, 3]}\n')
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(tmp_path / "cfg" / "ds_config.json"), "--master-port", "auto",
                "--run-dir", str(tmp_path / "run"), "infer", "--model", "tiny-qwen3-next", "--prompts", str(prompts))
    assert p.returncode != 0 and "tensor_parallel.tp_size 2" in p.stdout + p.stderr and "Gated DeltaNet" in p.stdout + p.stderr


def test_chunked_loss_gathers_the_head_once_per_micro_step(hostfile, tmp_path):
    """Under ZeRO-3 the chunked loss calls lm_head once per 16-token chunk (and again in backward), yet the
    head (tied to the embedding, the largest message) is all-gathered once per micro-step, as on the HF
    path: the rendered stage3_max_reuse_distance keeps it live between chunks."""
    cfg = gen_train_config("tiny-qwen3", hostfile, tmp_path / "cfg")
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--master-port", "auto",
                "--run-dir", str(tmp_path / "run"), str(ROOT / "tests" / "launch_scripts" / "head_gathers.py"),
                "--config", str(cfg / "ds_config.json"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    g = json.loads(next(ln for ln in p.stdout.splitlines() if "GATHERS " in ln).split("GATHERS ", 1)[1])
    assert g["chunks"] == 8
    assert g["chunked"][1] == g["hf"][1] == 1, g
    assert g["chunked"][0] <= g["hf"][0] + 4, g  # small buckets may coalesce differently, nothing per chunk


def zero_probe_result(stdout: str) -> dict:
    """The ZERO line tests/launch_scripts/zero_probe.py prints on rank 0."""
    return json.loads(next(ln for ln in stdout.splitlines() if "ZERO " in ln).split("ZERO ", 1)[1])


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-qwen3-moe"])
def test_zero3_units_are_what_the_estimator_counts(model, hostfile, tmp_path):
    """Two ZeRO-3 terms against DeepSpeed itself: the parameters it keeps persistent (ds_persist) equal
    sharding.persistent_params at the rendered threshold, and the largest all-gather of a step is the
    estimator's largest gathered unit; an MoE block (a ZeRO-3 leaf) is fetched in one message."""
    from qwen_ds.models import load_model
    from qwen_ds.models.counts import layer_tensors
    from qwen_ds.sharding import largest_gathered, persistent_params

    cfg = gen_train_config(model, hostfile, tmp_path / "cfg")
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--master-port", "auto",
                "--run-dir", str(tmp_path / "run"), str(ROOT / "tests" / "launch_scripts" / "zero_probe.py"),
                "--config", str(cfg / "ds_config.json"), "--model", model)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = zero_probe_result(p.stdout)
    spec = load_model(model)
    thr = json.loads((cfg / "ds_config.json").read_text())["zero_optimization"]["stage3_param_persistence_threshold"]
    assert got["persist"] == persistent_params(spec, thr)
    gathered = [size // got["elem"] * 2 for size in got["gather_sizes"]]  # bytes of one rank's shard -> elements of 2 ranks
    assert gathered[0] == largest_gathered(spec)[0]
    if spec.n_moe_layers:
        block = sum(n for module, n in layer_tensors(spec, 0) if module.startswith("mlp"))
        assert block in gathered


@pytest.mark.parametrize("zero,precision", [(3, "fp32"), (2, "fp32"), (3, "bf16")])
def test_optimizer_states_are_what_the_estimator_counts(zero, precision, hostfile, tmp_path):
    """The fp32 master partition and Adam's m, v that DeepSpeed's ZeRO optimizer holds on a rank equal the
    estimator's terms; fp32 training too keeps a cloned master partition (not the params themselves)."""
    cfg = tmp_path / "cfg"
    p = qwen_ds("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hostfile), "--zero", str(zero),
                "--micro-batch", "2", "--grad-accum", "1", "--no-checkpointing", "--offload-optimizer", "none",
                "--offload-param", "none", "--tp", "1", "--pp", "1", "--seq-len", "64", "--precision", precision, "-o", str(cfg))
    assert p.returncode == 0, p.stderr
    p = qwen_ds("launch", "--hostfile", str(hostfile), "--config", str(cfg / "ds_config.json"), "--master-port", "auto",
                "--run-dir", str(tmp_path / "run"), str(ROOT / "tests" / "launch_scripts" / "zero_probe.py"),
                "--config", str(cfg / "ds_config.json"), "--model", "tiny-qwen3")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = zero_probe_result(p.stdout)
    terms = json.loads((cfg / "plan.json").read_text())["memory"]["terms"]
    assert got["master"] * 4 == terms["master_weights_fp32"] > 0
    assert got["states"] * 4 == terms["optimizer_states"]
    assert got["master_aliases_params"] is False
