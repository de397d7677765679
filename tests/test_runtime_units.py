"""Runtime pieces on CPU without a launcher: chunked loss == HF loss, data determinism, the
tokenised-file path with a local tokenizer, FP8 (torchao float8: which layers convert, the closed
form of the planner equal to the conversion, refusals), metrics health warnings."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qwen_ds.runtime.common import RuntimeFailure  # noqa: E402
from qwen_ds.runtime.data import TokenFile, synthetic_batch  # noqa: E402
from qwen_ds.runtime.fp8 import apply_fp8, fp8_filter  # noqa: E402
from qwen_ds.runtime.loss import causal_lm_loss  # noqa: E402
from qwen_ds.runtime.metrics import StepMeter  # noqa: E402


def tiny_model(name="tiny-qwen3"):
    from transformers import AutoConfig, AutoModelForCausalLM

    from qwen_ds.models import load_model

    raw = dict(load_model(name).config)
    mt = raw.pop("model_type")
    raw.pop("architectures", None)
    raw.pop("torch_dtype", None)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **raw)).float()


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-qwen3-moe"])
def test_chunked_loss_equals_hf_loss_and_its_gradients(name):
    m = tiny_model(name)
    ids = synthetic_batch(m.config.vocab_size, 2, 40, 0, 0, 0, 0)
    hf = causal_lm_loss(m, ids, "hf")
    hf.backward()
    g_hf = m.model.embed_tokens.weight.grad.clone()
    m.zero_grad()
    ch = causal_lm_loss(m, ids, "chunked", chunk=16)  # several chunks, the last one partial
    ch.backward()
    assert ch.item() == pytest.approx(hf.item(), rel=1e-5)
    assert torch.allclose(m.model.embed_tokens.weight.grad, g_hf, rtol=1e-4, atol=1e-6)


def test_synthetic_batches_are_deterministic_and_learnable():
    a = synthetic_batch(1024, 3, 16, 7, step=5, rank=1, micro_step=2)
    assert torch.equal(a, synthetic_batch(1024, 3, 16, 7, step=5, rank=1, micro_step=2))
    assert not torch.equal(a, synthetic_batch(1024, 3, 16, 7, step=5, rank=0, micro_step=2))
    diffs = (a[:, 1:] - a[:, :-1]) % 1024
    assert all(len(set(row.tolist())) == 1 for row in diffs)  # a constant stride per row: learnable


def test_micro_batch_numbering_keeps_dp_batches_and_covers_a_step_once():
    """j = micro_step x dp + dp_rank: a dp-only run of W ranks draws the batch of (rank, micro_step); a
    tp / pp run with fewer dp ranks and more micro-steps draws the same set of batches per step."""
    from qwen_ds.runtime.data import sample_index, synthetic_sample

    w, ga = 4, 2
    dp_only = {(r, m): synthetic_batch(512, 1, 8, 3, 1, r, m) for r in range(w) for m in range(ga)}
    for (r, m), ids in dp_only.items():
        assert torch.equal(synthetic_sample(512, 1, 8, 3, 1, sample_index(r, w, m), w), ids)
    for dp in (1, 2):  # tp or pp 4 / dp, the same global batch: dp x grad_accum' = w x ga
        ga2 = w * ga // dp
        js = sorted(sample_index(d, dp, k) for d in range(dp) for k in range(ga2))
        assert js == list(range(w * ga))

def test_token_file_with_a_local_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"sample {i} of a tiny corpus for the qwen-ds runtime test" for i in range(200)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    tf = TokenFile(str(data), str(tmp_path / "tok"), seq=32)
    b = tf.batch(micro=2, step=3, j=1, per_step=2)
    assert b.shape == (2, 32) and b.max() < 300
    assert torch.equal(b, tf.batch(micro=2, step=3, j=1, per_step=2))
    # consecutive micro-batches of a step, and the next step, take the next rows (wrapping around)
    assert torch.equal(tf.batch(micro=2, step=3, j=0, per_step=2)[1], tf.rows[(3 * 2 + 0) * 2 + 1])
    assert torch.equal(tf.batch(micro=2, step=4, j=0, per_step=2)[0], tf.rows[(4 * 2 * 2) % tf.rows.shape[0]])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "x"}\n')
    with pytest.raises(RuntimeFailure, match="line 1"):
        TokenFile(str(bad), str(tmp_path / "tok"), seq=32)
    with pytest.raises(RuntimeFailure, match="cannot load a local tokenizer"):
        TokenFile(str(data), str(tmp_path / "nope"), seq=32)


def test_fp8_is_refused_on_gpus_before_ada(monkeypatch):
    """An A100 (8.0) cannot run FP8 GEMMs: the run stops naming the GPU and the fix. No such GPU here,
    so torch.cuda's answers are replaced; without CUDA the recipe runs emulated on CPU (test_fp8.py)."""
    from qwen_ds.runtime.fp8 import check_fp8_device

    from qwen_ds.plandoc import PlanDocument

    assert PlanDocument.from_json({"fp8_recipe": {"recipe": "tensorwise"}}).wants_fp8
    assert PlanDocument.from_json({"plan": {"precision": "fp8"}}).wants_fp8
    assert not PlanDocument.from_json({"plan": {"precision": "bf16"}}).wants_fp8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(RuntimeFailure, match="A100-SXM4-80GB has compute capability 8.0 < 8.9.*--precision bf16"):
        check_fp8_device()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    assert check_fp8_device() == "NVIDIA H100 80GB HBM3"


def test_fp8_converts_every_projection_but_head_router_and_experts():
    pytest.importorskip("torchao")
    dense = tiny_model("tiny-qwen3")
    n = apply_fp8(dense, None)
    names = {k for k, m in dense.named_modules() if type(m).__name__ == "Float8Linear"}
    assert n == len(names) == 2 * 7  # q k v o gate up down in each of 2 layers
    assert [k for k, m in dense.named_modules() if type(m).__name__ == "Linear"] == ["lm_head"]
    moe = tiny_model("tiny-qwen3-moe")
    apply_fp8(moe, None)
    names = {k for k, m in moe.named_modules() if type(m).__name__ == "Float8Linear"}
    assert names and all(k.split(".")[-2] == "self_attn" for k in names)  # experts are fused 3-D tensors, not Linear


@pytest.mark.parametrize("name", ["Qwen3-0.6B", "Qwen2.5-7B", "Llama-3.1-8B", "Qwen3-30B-A3B", "Qwen3-Next-80B-A3B"])
def test_fp8_closed_form_equals_torchao_conversion(name):
    """The planner's FP8 share (sharding.fp8_matmul_params) is what the runtime really converts."""
    pytest.importorskip("torchao")
    from transformers import AutoConfig, AutoModelForCausalLM

    from qwen_ds.models import load_model
    from qwen_ds.sharding import fp8_matmul_params

    loaded = load_model(name)
    raw = dict(loaded.config)
    mt = raw.pop("model_type")
    raw.pop("architectures", None)
    raw.pop("torch_dtype", None)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **raw))
    apply_fp8(m, None)
    converted = sum(p.numel() for mod in m.modules() if type(mod).__name__ == "Float8Linear" for p in mod.parameters())
    assert converted == fp8_matmul_params(loaded) > 0


def test_fp8_forward_backward_tracks_bf16():
    """Same weights, same batch: the FP8 model's loss stays within 2 % of bf16 and gradients reach the weights."""
    pytest.importorskip("torchao")
    ref = tiny_model().to(torch.bfloat16)
    fp8 = tiny_model().to(torch.bfloat16)
    apply_fp8(fp8, None)
    ids = synthetic_batch(ref.config.vocab_size, 4, 32, 0, 0, 0, 0)
    l_ref = ref(input_ids=ids, labels=ids).loss
    l_fp8 = fp8(input_ids=ids, labels=ids).loss
    l_fp8.backward()
    assert l_fp8.item() != l_ref.item() and abs(l_fp8.item() - l_ref.item()) / l_ref.item() < 0.02
    q = fp8.model.layers[0].self_attn.q_proj
    assert type(q).__name__ == "Float8Linear" and q.weight.grad is not None and q.weight.grad.abs().sum() > 0


def test_fp8_head_converts_the_tied_head_and_keeps_the_tie():
    """train --fp8-head: the output head becomes Float8Linear too, still sharing the embedding's weight (Qwen3-4B
    ties them), and the chunked loss trains through it."""
    pytest.importorskip("torchao")
    m = tiny_model().to(torch.bfloat16)
    m.lm_head.weight = m.model.embed_tokens.weight  # tie, as tie_word_embeddings does
    assert apply_fp8(m, None, head=True) == 2 * 7 + 1
    assert type(m.lm_head).__name__ == "Float8Linear" and m.lm_head.weight is m.model.embed_tokens.weight
    ids = synthetic_batch(m.config.vocab_size, 2, 32, 0, 0, 0, 0)  # 62 shifted tokens: chunks 16, 16, 16, 14
    seen = []
    m.lm_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    loss = causal_lm_loss(m, ids, "chunked", chunk=16)
    loss.backward()
    # float8 GEMMs need token counts divisible by 16 (an H200 refused a 1022-token chunk): the last chunk is
    # padded with ignored tokens, which change neither the loss nor the count it is averaged over
    assert seen[:4] == [16, 16, 16, 16]
    # the CPU's float8 emulation takes the 14-token chunk as is: the padded loss equals the unpadded sum over the
    # 62 real tokens (a count that took in the 2 pad tokens would be 3 % off)
    from qwen_ds.runtime.loss import _chunk_loss

    with torch.no_grad():
        hidden = m.model(input_ids=ids, use_cache=False).last_hidden_state
        h, y = hidden[:, :-1].reshape(-1, hidden.shape[-1]), ids[:, 1:].reshape(-1)
        ref = sum(_chunk_loss(h[i:i + 16], y[i:i + 16], m.lm_head) for i in range(0, 62, 16)) / 62
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert m.model.embed_tokens.weight.grad is not None and m.model.embed_tokens.weight.grad.abs().sum() > 0
    assert fp8_filter(torch.nn.Linear(64, 128), "lm_head", head=True)
    assert not fp8_filter(torch.nn.Linear(64, 8), "model.layers.0.mlp.gate", head=True)  # routers stay bf16


def test_fp8_unknown_recipe_is_one_line_failure():
    pytest.importorskip("torchao")
    with pytest.raises(RuntimeFailure, match="'no-such'.*tensorwise, rowwise"):
        apply_fp8(tiny_model(), {"recipe": "no-such"})


def test_fp8_filter_skips_head_router_and_odd_shapes():
    assert fp8_filter(torch.nn.Linear(64, 128), "model.layers.0.mlp.up_proj")
    assert fp8_filter(torch.nn.Linear(64, 128), "model.layers.0.mlp.gate_proj")  # not the router "mlp.gate"
    assert fp8_filter(torch.nn.Linear(64, 128), "model.layers.0.mlp.shared_expert.gate_proj")
    assert not fp8_filter(torch.nn.Linear(64, 16), "model.layers.0.mlp.shared_expert_gate")
    assert not fp8_filter(torch.nn.Linear(64, 128), "lm_head")
    assert not fp8_filter(torch.nn.Linear(64, 8), "model.layers.0.mlp.gate")
    assert not fp8_filter(torch.nn.Linear(60, 128), "model.layers.0.mlp.up_proj")


def test_health_warnings_name_the_knob_once():
    meter = StepMeter(flops_per_token=1e9, tokens_per_step=1000, world=2, peak_tflops=100.0)
    rec = {"comm_share": 0.4, "fragmentation": 0.09, "mfu": 0.05}
    warnings = meter.health(rec)
    assert len(warnings) == 3
    assert any("hpZ" in w for w in warnings) and any("expandable_segments" in w for w in warnings)
    assert any("micro-batch" in w for w in warnings)
    assert meter.health(rec) == []  # once per run
    assert StepMeter(1e9, 1000, 2, 100.0).health({"comm_share": 0.1, "fragmentation": 0.01, "mfu": 0.5}) == []


def test_a_new_run_never_writes_over_a_previous_runs_outputs(tmp_path):
    from qwen_ds.runtime.train import check_outputs, parse_args

    ck, metrics = tmp_path / "ck", tmp_path / "m.jsonl"
    base = ["--config", "c.json", "--save-dir", str(ck), "--metrics-file", str(metrics)]
    check_outputs(parse_args(base))  # nothing there yet
    ck.mkdir()
    (ck / "latest").write_text("step10")
    with pytest.raises(RuntimeFailure, match=r"already holds a checkpoint \(step10\).*--resume.*--force"):
        check_outputs(parse_args(base))
    check_outputs(parse_args(base + ["--resume"]))
    check_outputs(parse_args(base + ["--force"]))
    (ck / "latest").unlink()
    metrics.write_text('{"step": 1}\n')
    with pytest.raises(RuntimeFailure, match="already has lines of another run"):
        check_outputs(parse_args(base))
    metrics.write_text("")
    check_outputs(parse_args(base))  # an empty file holds nothing to lose


def test_resumed_metrics_keep_the_steps_up_to_the_checkpoint(tmp_path):
    from qwen_ds.runtime.train import metrics_for_resume

    metrics = tmp_path / "m.jsonl"
    lines = [json.dumps({"step": i, "loss": 1.0 / i}) for i in range(1, 13)] + ['{"step": 13, "lo']  # crashed mid-line
    metrics.write_text("\n".join(lines) + "\n")
    metrics_for_resume(str(metrics), 10)
    assert [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()] == list(range(1, 11))
    metrics_for_resume(str(metrics), 0)  # --force: start over
    assert metrics.read_text() == ""


def test_gpu_out_of_memory_is_one_line_with_the_plans_prediction(tmp_path, capsys):
    from qwen_ds.runtime.common import run_entry
    from qwen_ds.runtime.train import parse_args

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"memory": {"gpu_allocated_bytes": 40 * 2**30, "gpu_reserved_bytes": 44 * 2**30}}))

    def step(_args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79 GiB\nmore")

    assert run_entry(step, parse_args(["--config", "c.json", "--plan", str(plan)])) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: rank 0: GPU out of memory (CUDA out of memory. Tried to allocate")
    assert "the plan predicted 40.0 GiB allocated, 44.0 GiB reserved per GPU" in err and "--headroom" in err
    assert run_entry(step, parse_args(["--config", "c.json"])) == 1
    assert "predicted unknown (no plan.json)" in capsys.readouterr().err


COMM_SCRIPT = r'''
import os, sys, time, torch, deepspeed
import deepspeed.comm as dist
from qwen_ds.runtime.metrics import comm_ms_and_reset
deepspeed.init_distributed(dist_backend="gloo")
dist.configure(enabled=True, prof_all=True, verbose=False, debug=False)
x = torch.ones(1 << 16)
comm_ms_and_reset()
t0 = time.perf_counter()
for _ in range(60):
    dist.all_reduce(x)
wall_ms = (time.perf_counter() - t0) * 1000
first = comm_ms_and_reset()
t0 = time.perf_counter()
for _ in range(60):
    dist.all_reduce(x)
wall2_ms = (time.perf_counter() - t0) * 1000
second = comm_ms_and_reset()
print("COMM", wall_ms, first, wall2_ms, second, comm_ms_and_reset())
'''


def test_collective_time_is_what_the_ops_took_not_deepspeeds_running_totals():
    """DeepSpeed's comms logger records each op's running total; summed, 60 ops would read ~30x the wall time."""
    import os
    import subprocess
    import sys

    from qwen_ds.launch.ports import free_port
    from qwen_ds.launch.run import clear_shm_buffers

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    try:
        p = subprocess.run([sys.executable, "-c", COMM_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    finally:
        clear_shm_buffers("127.0.0.1", env["MASTER_PORT"])
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("COMM ")]
    assert p.returncode == 0 and line, p.stdout[-2000:] + p.stderr[-3000:]
    wall, first, wall2, second, empty = map(float, line[0].split()[1:])
    assert 0 < first <= wall * 1.05 + 1
    assert 0 < second <= wall2 * 1.05 + 1  # the second window does not carry the first one's time
    assert empty == 0.0


def test_every_rank_refuses_a_config_its_plan_was_not_made_for(tmp_path):
    """launch checks the pair before it starts; the ranks read both files again later, so they check too."""
    import argparse

    from helpers import run_cli
    from qwen_ds.runtime.common import read_config_and_plan

    rc, _, err = run_cli("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--gpus-per-node", "2", "-o", str(tmp_path))
    assert rc == 0, err
    args = argparse.Namespace(config=str(tmp_path / "ds_config.json"), plan=str(tmp_path / "plan.json"))
    cfg, plan = read_config_and_plan(args)
    assert cfg["train_micro_batch_size_per_gpu"] >= 1 and plan.ds_config == cfg
    cfg["train_micro_batch_size_per_gpu"] += 1
    (tmp_path / "ds_config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeFailure, match="train_micro_batch_size_per_gpu"):
        read_config_and_plan(args)


def test_resume_from_takes_a_checkpoint_tag_of_the_save_dir(tmp_path):
    """--resume-from TAG names a folder of --save-dir: a path, a missing tag or no --save-dir is refused before
    DeepSpeed starts; a tag that is there implies --resume."""
    from qwen_ds.runtime.train import check_outputs, parse_args

    (tmp_path / "step4").mkdir()
    base = ["--config", "c.json", "--save-dir", str(tmp_path)]
    for bad, why in ((["--resume-from", "../step4"], "a checkpoint tag is letters"),
                     (["--resume-from", "step4/x"], "a checkpoint tag is letters"),
                     (["--resume-from", "step8"], "no checkpoint step8 in --save-dir")):
        with pytest.raises(RuntimeFailure, match=why):
            check_outputs(parse_args(base + bad))
    with pytest.raises(RuntimeFailure, match="--resume needs --save-dir"):
        check_outputs(parse_args(["--config", "c.json", "--resume-from", "step4"]))
    args = parse_args(base + ["--resume-from", "step4"])
    check_outputs(args)
    assert args.resume is True


def test_op_builds_named_before_deepspeed_compiles_them(tmp_path, monkeypatch):
    """The ops a config makes DeepSpeed load, and of those the ones neither installed nor in torch's extension
    cache (an empty TORCH_EXTENSIONS_DIR: all of them)."""
    from qwen_ds.runtime.ops import ops_to_load, pending_op_builds

    offload = {"optimizer": {"type": "AdamW"}, "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    assert ops_to_load(offload, on_cuda=True) == ["CPUAdamBuilder"]
    assert ops_to_load({"optimizer": {"type": "AdamW"}}, on_cuda=True) == ["FusedAdamBuilder"]
    assert ops_to_load({"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}, on_cuda=True) == []
    nvme = {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}
    assert ops_to_load(nvme, on_cuda=False) == ["AsyncIOBuilder", "ShareMemCommBuilder"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert pending_op_builds(offload, on_cuda=False) == ["cpu_adam", "deepspeed_shm_comm"]
    (tmp_path / "deepspeed_shm_comm").mkdir(exist_ok=True)
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    assert pending_op_builds(offload, on_cuda=False) == ["cpu_adam"]


def test_profiled_step_writes_the_top_operators_with_their_shares(tmp_path):
    """train --profile: a real torch.profiler recording (CPU here) written as a table whose shares add up to the
    step's self time; nothing is recorded or written when the step is not the profiled one."""
    from qwen_ds.runtime.profile import profiled_step

    out = tmp_path / "profile.md"
    a = torch.randn(128, 128)
    with profiled_step(str(tmp_path / "skipped.md"), enabled=False):
        a @ a
    assert not (tmp_path / "skipped.md").exists()
    with profiled_step(str(out), enabled=True, top=3):
        for _ in range(4):
            (a @ a).relu().sum()
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    assert len(rows) == 4 and "`aten::mm`" in "".join(rows[:3])  # top 3 and "all others"
    shares = [float(ln.rsplit("|", 2)[1].strip().rstrip("%")) for ln in rows]
    assert abs(sum(shares) - 100) < 0.5 and shares[:3] == sorted(shares[:3], reverse=True)
    assert "self CPU time of the step" in out.read_text()


def test_compiled_layers_and_loss_train_like_eager():
    """train --compile: the decoder layers compiled in place (one graph the layers share) and the chunked loss's
    chunk compiled give the eager loss and gradients (Inductor on this CPU; the GPU speed is in benchmarks/)."""
    import copy

    from qwen_ds.runtime.compiled import compile_layers
    from qwen_ds.runtime.loss import compiled_chunk_loss

    eager = tiny_model()
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert compile_layers(compiled) == compiled.config.num_hidden_layers >= 2
    ids = synthetic_batch(eager.config.vocab_size, 2, 40, 0, 0, 0, 0)
    want = causal_lm_loss(eager, ids, "chunked", chunk=16)
    want.backward()
    hidden = compiled.model(input_ids=ids, use_cache=False).last_hidden_state
    # the layers share one frame: Dynamo traced one layer for all of them, not one graph per layer
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    from qwen_ds.runtime.loss import chunked_causal_lm_loss

    got = chunked_causal_lm_loss(hidden, compiled.lm_head, ids, 16, compiled_chunk_loss())
    got.backward()
    assert counters["stats"]["unique_graphs"] > 1  # the chunk loss was compiled too
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("choice,family,pp,zero,tp,cuda,compiles", [
    ("auto", "qwen3", 1, 1, 1, True, True),
    ("auto", "qwen3", 1, 1, 1, False, False),      # CPU: off unless asked
    ("auto", "qwen3_moe", 1, 0, 1, True, False),   # not measured
    ("auto", "qwen3", 2, 1, 1, True, False),       # pipeline stages
    ("on", "qwen3", 1, 3, 1, True, False),         # ZeRO-3 hooks inside the layer
    ("auto", "qwen3", 1, 1, 2, True, False),       # tensor parallelism not measured
    ("on", "qwen3_moe", 1, 2, 2, False, True),
    ("off", "qwen3", 1, 0, 1, True, False),
])
def test_compile_choice(choice, family, pp, zero, tp, cuda, compiles):
    from qwen_ds.runtime.compiled import compile_reason

    why = compile_reason(choice, family, pp, zero, tp, cuda)
    assert (why is None) == compiles, why
    if choice == "auto" and compiles:  # peft adapters and 4-bit layers were not measured compiled: auto leaves them
        assert "--finetune lora" in compile_reason(choice, family, pp, zero, tp, cuda, "lora")
        assert compile_reason("on", family, pp, zero, tp, cuda, "qlora") is None


@pytest.mark.parametrize("allocator,env,says", [
    ("expandable", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, None),   # qwen-ds launch
    ("expandable", {}, "warning: the plan's reserved memory assumes expandable segments"),
    ("expandable", {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}, "--allocator default"),
    ("expandable", {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}, None),        # torch's newer name
    ("default", {}, None),
    ("default", {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True,max_split_size_mb:64"}, "below the estimate"),
])
def test_the_trainer_names_an_allocator_the_plan_did_not_assume(allocator, env, says):
    from qwen_ds.runtime.metrics import allocator_note

    note = allocator_note(allocator, env)
    assert (note is None) if says is None else (says in note)


def test_the_speed_model_knows_which_plans_the_trainer_compiles():
    """planner/throughput.py times eager layers slower where the built-in trainer leaves them eager: the same rule
    (builtin.compile_reason), so a LoRA plan of a dense Qwen3 is timed eager, its full-training twin compiled."""
    import dataclasses

    from qwen_ds.builtin import builtin_compiles
    from qwen_ds.hardware import Cluster, get_gpu
    from qwen_ds.knobs import Plan, Workload
    from qwen_ds.models import load_model
    from qwen_ds.planner.throughput import step_time

    full = dataclasses.replace(Plan(), zero_stage=2)
    lora = dataclasses.replace(full, finetune="lora")
    assert builtin_compiles("qwen3", full) and not builtin_compiles("qwen3", lora)
    assert not builtin_compiles("qwen3_moe", full)
    assert not builtin_compiles("qwen3", dataclasses.replace(full, pp=2, zero_stage=1))
    spec, cluster, w = load_model("Qwen3-8B"), Cluster(get_gpu("H200"), 1, 1), Workload(seq_len=4096)
    from qwen_ds.calibration import constant
    from qwen_ds.planner.throughput import finetune_flops_factor

    t_full, t_lora = step_time(spec, cluster, w, full).compute_s, step_time(spec, cluster, w, lora).compute_s
    assert t_lora == pytest.approx(t_full * finetune_flops_factor(spec, lora) * constant("eager_slowdown"), rel=1e-9)


def test_train_checkpointing_flag_overrides_the_plan_and_serves_configs_without_one():
    """train --checkpointing: a config of your own (no plan.json) can turn per-layer checkpointing on, as the HF
    Trainer's gradient_checkpointing does (benchmarks/planner_vs_stock.py runs the LLaMA-Factory config so); against
    a plan it wins, with a note that the plan's memory no longer holds."""
    from qwen_ds.runtime.train import activation_checkpointing, parse_args

    assert parse_args(["--config", "c.json", "--checkpointing", "on"]).checkpointing == "on"
    assert parse_args(["--config", "c.json"]).checkpointing is None
    assert activation_checkpointing(None, None) == (False, None)
    assert activation_checkpointing("on", None) == (True, None)
    assert activation_checkpointing(None, True) == (True, None)
    assert activation_checkpointing("off", False) == (False, None)
    on, note = activation_checkpointing("off", True)
    assert on is False and "overrides the plan" in note
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.json", "--checkpointing", "yes"])
