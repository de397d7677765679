"""Trainable parameters of LoRA / freeze in closed form (qwen_ds/models/finetune.py) against peft itself:
``peft.get_peft_model`` on transformers' meta-device model, counting the parameters that require grad."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import pytest

from qwen_ds.errors import InputError
from qwen_ds.models import count_params, load_model
from qwen_ds.models.counts import kind_counts
from qwen_ds.models.finetune import freeze_params, lora_params, lora_tensors, target_names, trainable_params


def reduced(name: str, layers: int, tmp_path) -> str:
    """The preset at fewer layers (every per-layer tensor at full size): peft wraps the 48-layer Qwen3-Next in a
    minute."""
    spec = load_model(name)
    path = tmp_path / f"{name}-L{layers}.json"
    path.write_text(json.dumps({**spec.config, "num_hidden_layers": layers}))
    return str(path)


def peft_trainable(model_ref: str, rank: int, targets: str) -> Counter:
    """Sizes (elements) of the tensors that require grad once peft wraps the model: how many of each size."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from qwen_ds.models.meta import build_meta_model

    model = build_meta_model(dict(load_model(model_ref).config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank,
                         target_modules=targets if targets == "all-linear" else targets.split(","))
        peft_model = get_peft_model(model, cfg)
    return Counter(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.runtime
@pytest.mark.parametrize("name,layers,rank,targets", [
    ("Qwen3-0.6B", None, 8, "all-linear"),
    ("Qwen3-0.6B", None, 32, "q_proj,k_proj,v_proj,o_proj"),
    ("Qwen3-8B", None, 16, "all-linear"),
    ("Qwen3-8B", None, 64, "q_proj,v_proj"),
    ("Qwen3-8B", None, 8, "gate_proj,up_proj,down_proj"),
    ("Qwen3-30B-A3B", 4, 16, "all-linear"),  # routed experts (fused 3-D) and the router are targeted
    ("Qwen3-30B-A3B", None, 8, "q_proj,k_proj,v_proj,o_proj"),
    ("Qwen3-30B-A3B", 4, 4, "gate,gate_proj,up_proj,down_proj"),
    ("Qwen3-Next-80B-A3B", 4, 16, "all-linear"),  # 3 Gated DeltaNet + 1 gated attention; shared expert MLP not
    ("Qwen3-Next-80B-A3B", None, 8, "in_proj_qkvz,out_proj,q_proj"),
    ("Qwen3-Next-80B-A3B", 4, 4, "shared_expert_gate,down_proj"),
])
def test_lora_trainable_params_equal_peft(name, layers, rank, targets, tmp_path):
    """The count, and each adapter tensor's size (what ZeRO-3's persistence threshold and gradient gathering see)."""
    ref = reduced(name, layers, tmp_path) if layers else name
    spec = load_model(ref)
    sizes = peft_trainable(ref, rank, targets)
    assert lora_params(spec, targets, rank) == sum(n * k for n, k in sizes.items())
    ours: Counter = Counter()
    for kind, count in kind_counts(spec).items():
        for _, n in lora_tensors(spec, targets, rank, kind):
            ours[n] += count
    assert ours == sizes


def test_lora_counts_scale_with_rank_and_depth():
    """Closed form: linear in the rank; on the full Qwen3-Next it is the reduced model's per-layer sum x 12."""
    next_ = load_model("Qwen3-Next-80B-A3B")
    assert lora_params(next_, "all-linear", 32) == 2 * lora_params(next_, "all-linear", 16)
    dense = load_model("Qwen3-8B")
    # all-linear r16 on Qwen3-8B: 36 layers x 16 x (q 4096+4096, k 4096+1024, v 4096+1024, o 4096+4096,
    # gate/up 4096+12288 each, down 12288+4096)
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 12288) * 3)
    assert lora_params(dense, "all-linear", 16) == 36 * per_layer == 43_646_976


def test_moe_all_linear_targets_the_experts_and_not_the_shared_expert_mlp():
    """Stated decision (issue #17): peft 0.21 maps all-linear's gate / gate_proj / up_proj / down_proj onto the
    router and the fused expert tensors of Qwen3-MoE / Qwen3-Next, so routed experts train (a large count) and the
    shared expert's own Linear layers of those names do not."""
    moe = load_model("Qwen3-30B-A3B")
    attn_only = lora_params(moe, "q_proj,k_proj,v_proj,o_proj", 16)
    everything = lora_params(moe, "all-linear", 16)
    assert everything > 50 * attn_only  # experts dominate: 0.997 B at r16 (3.3 % of the model); attention 13 M
    names = set(target_names(moe))
    assert "experts" not in names and {"gate", "gate_proj", "up_proj", "down_proj"} <= names


def test_bad_targets_and_methods_are_one_line_errors():
    spec = load_model("Qwen3-30B-A3B")
    with pytest.raises(InputError, match="gate_proj and up_proj are one fused expert tensor"):
        lora_params(spec, "gate_proj", 8)
    with pytest.raises(InputError, match=r"mlp_fc not in .*choose all-linear or from: .*q_proj"):
        lora_params(spec, "q_proj,mlp_fc", 8)
    with pytest.raises(InputError, match="--finetune 'adapter'"):
        trainable_params(spec, "adapter")
    with pytest.raises(InputError, match="--lora-rank 0"):
        trainable_params(spec, "lora", rank=0)
    with pytest.raises(InputError, match="--freeze-layers 99"):
        freeze_params(load_model("Qwen3-8B"), 99)
    with pytest.raises(InputError, match="--trainable-modules 'attn'"):
        freeze_params(load_model("Qwen3-8B"), 2, "attn")


def test_freeze_trains_the_last_layers_or_their_named_modules():
    """LLaMA-Factory's freeze: freeze_trainable_layers N (last N; first N when negative), freeze_trainable_modules."""
    spec = load_model("Qwen3-8B")
    full = count_params(spec)
    per_layer = (full.total - 2 * 151_936 * 4096 - 4096) // 36  # untied head + embedding, final norm
    assert freeze_params(spec, 2) == 2 * per_layer
    assert freeze_params(spec, -3) == 3 * per_layer
    assert freeze_params(spec, 2, "mlp") == 2 * 3 * 4096 * 12_288
    assert freeze_params(spec, 2, "mlp,self_attn") < freeze_params(spec, 2) == trainable_params(spec, "freeze")
    assert trainable_params(spec, "full") == full.total
    assert trainable_params(spec, "qlora", rank=16) == trainable_params(spec, "lora", rank=16)


# --------------------------------------------------------------------------- memory terms (issue #17 point 3)

from qwen_ds.estimator import estimate  # noqa: E402
from qwen_ds.estimator.model_states import NF4_BYTES  # noqa: E402
from qwen_ds.hardware import Cluster, get_gpu  # noqa: E402
from qwen_ds.knobs import Plan, Workload  # noqa: E402


def _terms(model: str, **plan):
    b = estimate(load_model(model), Cluster(get_gpu("A100-80GB"), 1, 8), Workload(seq_len=4096), Plan(**plan))
    return b, b.terms_dict()


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_lora_keeps_optimizer_states_for_the_adapters_only(zero):
    """Adapters get 16-bit grads, fp32 masters and Adam m, v (partitioned as the stage says); the frozen base keeps
    only its 16-bit weights, partitioned by ZeRO-3 like any parameter."""
    spec = load_model("Qwen3-8B")
    total, adapters = count_params(spec).total, lora_params(spec, "all-linear", 16)
    _, t = _terms("Qwen3-8B", zero_stage=zero, finetune="lora")
    dp_opt = 8 if zero >= 1 else 1
    assert t["optimizer_states"] == 8 * -(-adapters // dp_opt)
    assert t["master_weights_fp32"] == 4 * -(-adapters // dp_opt)
    assert t["gradients"] == 2 * (-(-adapters // 8) if zero >= 2 else adapters)
    assert t["params"] == (-(-2 * (total + adapters) // 8) if zero == 3 else 2 * (total + adapters))
    _, full = _terms("Qwen3-8B", zero_stage=zero)
    assert t["optimizer_states"] < full["optimizer_states"] / 100


def test_qlora_stores_the_linear_weights_in_nf4():
    from qwen_ds.models.finetune import linear_weights

    spec = load_model("Qwen3-32B")
    total, adapters, q = count_params(spec).total, lora_params(spec, "all-linear", 16), linear_weights(spec)
    _, t = _terms("Qwen3-32B", zero_stage=2, finetune="qlora")
    assert t["params"] == 2 * (total + adapters - q) + round(NF4_BYTES * q)
    assert 0.9 * total < q < total  # all but the embedding, head and norms
    _, lora = _terms("Qwen3-32B", zero_stage=2, finetune="lora")
    assert t["params"] < 0.3 * lora["params"]


def test_freeze_saves_activations_only_for_the_trained_layers():
    _, full = _terms("Qwen3-8B", zero_stage=2, checkpointing=False, finetune="full")
    _, last2 = _terms("Qwen3-8B", zero_stage=2, checkpointing=False, finetune="freeze", freeze_layers=2)
    _, first2 = _terms("Qwen3-8B", zero_stage=2, checkpointing=False, finetune="freeze", freeze_layers=-2)
    assert last2["activations"] * 18 == full["activations"]  # 2 of 36 layers
    assert first2["activations"] == full["activations"]  # the gradient passes through every later layer


def test_estimate_json_and_cli_errors():
    from helpers import run_cli

    rc, out, err = run_cli("estimate", "-m", "Qwen3-8B", "-g", "A100-80GB", "--gpus-per-node", "8",
                           "--finetune", "lora", "--lora-rank", "8", "--lora-targets", "q_proj,v_proj", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["trainable_params"] == lora_params(load_model("Qwen3-8B"), "q_proj,v_proj", 8)
    assert doc["plan"]["finetune"] == "lora" and doc["plan"]["lora_alpha"] == 16
    rc, _, err = run_cli("estimate", "-m", "Qwen3-8B", "-g", "A100-80GB", "--finetune", "lora", "--lora-targets",
                         "qkv")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--lora-targets 'qkv'" in err
    rc, _, err = run_cli("estimate", "-m", "Qwen3-8B", "-g", "A100-80GB", "--mode", "infer", "--finetune", "qlora")
    assert rc == 2 and "--finetune qlora with --mode infer" in err
    rc, _, err = run_cli("estimate", "-m", "Qwen3-8B", "-g", "A100-80GB", "--finetune", "qlora", "--precision", "fp32")
    assert rc == 2 and "QLoRA computes in bf16 or fp16" in err


# --------------------------------------------------------------------------- planner (issue #17 point 4)


def test_lora_plans_skip_sharding_where_the_base_fits_and_are_named_when_full_needs_more():
    from qwen_ds import plan
    from qwen_ds.api import SearchOptions

    gb64 = SearchOptions(global_batch=64)
    small = plan("Qwen3-8B", "A100-80GB", gpus_per_node=8, finetune="lora", options=gb64)
    assert small.best.plan.zero_stage < 3 and small.best.plan.offload_optimizer == "none"
    full = plan("Qwen3-32B", "A100-80GB", gpus_per_node=8, options=gb64)
    assert full.smallest is not None and full.smallest[0] == 2 and full.lora_fit is not None
    assert full.lora_fit.plan.finetune == "lora" and full.lora_fit.plan.offload_optimizer == "none"
    assert "full: needs 2 x 8 without offload; LoRA r16: fits 1 x 8 with ZeRO-3" in full.text()


def test_lora_step_skips_frozen_weight_gradients():
    """Speed model: LoRA's FLOPs are 4/6 of full training plus the adapters'; the optimizer step and the gradient
    collectives cover the adapters only."""
    import dataclasses

    from qwen_ds.calibration import constant
    from qwen_ds.planner.throughput import finetune_flops_factor, step_time

    m, c, w = load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 1, 8), Workload(seq_len=4096)
    full = Plan(zero_stage=2, micro_batch=2, grad_accum=4, loss="chunked")
    lora = dataclasses.replace(full, finetune="lora")
    f = finetune_flops_factor(m, lora)
    assert f == pytest.approx(4 / 6 + lora_params(m, "all-linear", 16) / count_params(m).total)
    tf, tl = step_time(m, c, w, full), step_time(m, c, w, lora)
    # the built-in trainer compiles the full plan's layers, not the LoRA plan's (builtin.compile_reason)
    assert tl.compute_s == pytest.approx(f * tf.compute_s * constant("eager_slowdown"))
    assert tl.gpu_optimizer_s < tf.gpu_optimizer_s / 100 and tl.comm_s < tf.comm_s / 100
    assert finetune_flops_factor(m, dataclasses.replace(full, finetune="freeze", freeze_layers=36)) == pytest.approx(1)


# --------------------------------------------------------------------------- rendering (issue #17 point 5)


def test_gen_config_for_peft_plans(tmp_path):
    """A LoRA / QLoRA / freeze plan: the DeepSpeed config lets a trainer's own optimizer over the adapters through
    (zero_allow_untested_optimizer, as LLaMA-Factory's configs do), --for hf-trainer writes LLaMA-Factory's
    fine-tuning keys; the launch line runs LoRA in the built-in trainer and says QLoRA needs your own script."""
    from helpers import run_cli

    base = ["gen-config", "-m", "Qwen3-8B", "-g", "A100-80GB", "--gpus-per-node", "8", "--zero", "3", "--micro-batch",
            "2", "--grad-accum", "1", "--checkpointing", "--offload-optimizer", "none", "--offload-param", "none"]
    rc, out, err = run_cli(*base, "--for", "hf-trainer", "--finetune", "qlora", "--lora-targets", "q_proj,v_proj",
                           "-o", str(tmp_path / "q"))
    assert rc == 0, err
    cfg = json.loads((tmp_path / "q" / "ds_config.json").read_text())
    assert cfg["zero_allow_untested_optimizer"] is True
    yaml = (tmp_path / "q" / "llamafactory.yaml").read_text()
    for line in ('finetuning_type: "lora"', "lora_rank: 16", "lora_alpha: 32", 'lora_target: "q_proj,v_proj"',
                 "quantization_bit: 4", "double_quantization: true"):
        assert line in yaml, yaml
    plan = json.loads((tmp_path / "q" / "plan.json").read_text())
    assert plan["plan"]["finetune"] == "qlora" and plan["plan"]["lora_targets"] == "q_proj,v_proj"
    rc, out, err = run_cli(*base, "--finetune", "freeze", "--freeze-layers", "4", "--for", "hf-trainer",
                           "-o", str(tmp_path / "f"))
    assert rc == 0, err
    yaml = (tmp_path / "f" / "llamafactory.yaml").read_text()
    assert 'finetuning_type: "freeze"' in yaml and "freeze_trainable_layers: 4" in yaml
    rc, out, err = run_cli(*base, "--finetune", "lora", "-o", str(tmp_path / "l"))
    assert rc == 0 and "needs your own script" not in out and out.rstrip().endswith(" train")  # the trainer runs LoRA
    rc, out, err = run_cli(*base, "--finetune", "qlora", "--zero", "3", "-o", str(tmp_path / "q2"))
    assert rc == 0 and "needs your own script: the built-in trainer keeps QLoRA's 4-bit base whole" in out
    rc, out, err = run_cli(*base, "--finetune", "qlora", "--zero", "2", "-o", str(tmp_path / "q3"))
    assert rc == 0 and "needs your own script" not in out and out.rstrip().endswith(" train")
    rc, out, err = run_cli(*base, "-o", str(tmp_path / "full"))
    assert json.loads((tmp_path / "full" / "ds_config.json").read_text())["zero_allow_untested_optimizer"] is False


def test_zero3_gathered_grads_and_persistent_tensors_count_only_what_trains():
    """Under ZeRO-3 a full-size gradient exists only for a unit that trains: LoRA's largest adapter tensor (Qwen3-8B
    r16: down_proj's A, 16 x 12,288), freeze's largest trained Linear, never the frozen embedding. peft's small
    adapter tensors fall under the persistence threshold and stay whole on every rank, with their gradients."""
    from qwen_ds.sharding import largest_gathered, persistent_params

    spec = load_model("Qwen3-8B")
    _, full = _terms("Qwen3-8B", zero_stage=3)
    _, lora = _terms("Qwen3-8B", zero_stage=3, finetune="lora")
    _, freeze = _terms("Qwen3-8B", zero_stage=3, finetune="freeze")
    assert full["zero3_gathered_grads"] == 2 * largest_gathered(spec)[0] == 2 * 151_936 * 4096
    assert lora["zero3_gathered_grads"] == 2 * 16 * 12_288
    assert freeze["zero3_gathered_grads"] == 2 * 12_288 * 4096
    thr = Plan(zero_stage=3).buckets(spec.hidden_size)["param_persistence_threshold"]
    small = sum(count * sum(n for _, n in lora_tensors(spec, "all-linear", 16, kind) if n <= thr)
                for kind, count in kind_counts(spec).items())
    assert 0 < small < lora_params(spec, "all-linear", 16)  # A [16, 4096] is small, down_proj's A [16, 12288] not
    base = persistent_params(spec, thr)
    assert full["zero3_persistent_params"] == 2 * 2 * base
    assert lora["zero3_persistent_params"] == 2 * (base + 2 * small)
    assert base < freeze["zero3_persistent_params"] // 2 < 2 * base  # the 2 trained layers' norms get gradients


def test_plan_compare_finetune_puts_each_methods_fastest_plan_side_by_side():
    """Qwen3-32B on 1 x 8 A100-80GB (the README's example): full training fits only with the optimizer offloaded,
    LoRA and QLoRA without offload, each row the planner's own winner for that method; QLoRA at fp32 is refused in its
    row, not for the whole table."""
    from helpers import run_cli

    from qwen_ds import api

    args = ("plan", "-m", "Qwen3-32B", "-g", "A100-80GB", "--gpus-per-node", "8", "--seq-len", "4096")
    rc, out, err = run_cli(*args, "--compare-finetune", "--json")
    assert rc == 0, err
    rows = {r["finetune"]: r for r in json.loads(out)["methods"]}
    assert list(rows) == ["full", "lora", "qlora", "freeze"]
    for method, row in rows.items():
        best = api.plan("Qwen3-32B", "A100-80GB", gpus_per_node=8, seq_len=4096, finetune=method).best
        assert row["best"]["tokens_per_s"] == best.time.tokens_per_s and row["best"]["family"] == best.family
    assert rows["full"]["best"]["offload_optimizer"] == "cpu" and rows["full"]["smallest_cluster_without_offload"]
    assert rows["lora"]["best"]["offload_optimizer"] == rows["qlora"]["best"]["offload_optimizer"] == "none"
    assert rows["lora"]["trainable_params"] == lora_params(load_model("Qwen3-32B"), "all-linear", 16)
    assert rows["qlora"]["best"]["zero_stage"] < 3  # the 4-bit base fits whole: no parameter gathering
    rc, out, err = run_cli(*args, "--compare-finetune")
    assert rc == 0 and "full: without offload needs 2 x 8 A100-80GB" in out
    assert [line.split()[0] for line in out.splitlines()[3:7]] == ["full", "lora", "qlora", "freeze"]
    rc, out, err = run_cli(*args, "--compare-finetune", "--precision", "fp32")
    assert rc == 0 and "qlora r16: refused: --finetune qlora with --precision fp32" in out
    rc, _, err = run_cli(*args, "--compare-finetune", "--finetune", "lora")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--compare-finetune with --finetune lora" in err


@pytest.mark.parametrize("method,extra", [("qlora", ()), ("freeze", ("--freeze-layers", "-3")),
                                          ("lora", ("--lora-rank", "32", "--lora-targets", "q_proj,v_proj"))])
def test_the_llamafactory_yaml_gen_config_writes_sizes_back_to_its_plan(method, extra, tmp_path):
    """estimate --config / validate with the LLaMA-Factory YAML of a PEFT plan read what trains from it
    (finetuning_type, lora_*, quantization_bit, freeze_*) and size the plan gen-config wrote, byte for byte."""
    from helpers import run_cli

    from qwen_ds import api

    out = tmp_path / "run"
    cluster = ("-m", "Qwen3-8B", "-g", "A100-80GB", "--gpus-per-node", "8")
    rc, _, err = run_cli("gen-config", *cluster, "--zero", "2", "--micro-batch", "2", "--grad-accum", "4",
                         "--checkpointing", "--offload-optimizer", "none", "--offload-param", "none", "--tp", "1",
                         "--pp", "1", "--seq-len", "4096", "--finetune", method, *extra, "--for", "hf-trainer",
                         "-o", str(out))
    assert rc == 0, err
    planned = json.loads((out / "plan.json").read_text())["memory"]["gpu_total_bytes"]
    rc, text, err = run_cli("estimate", *cluster, "--config", str(out / "ds_config.json"), "--training-args",
                            str(out / "llamafactory.yaml"), "--json")
    assert rc == 0, err
    doc = json.loads(text)
    assert doc["plan"]["finetune"] == method and doc["gpu_total_bytes"] == planned
    v = api.validate(str(out / "ds_config.json"), model="Qwen3-8B", gpu="A100-80GB", gpus_per_node=8, nodes=1,
                     training_args=str(out / "llamafactory.yaml"), use_deepspeed=False)
    assert v.memory.memory.gpu_total_bytes == planned


def test_llamafactory_defaults_and_refusals_when_reading_what_trains(tmp_path):
    """A LLaMA-Factory YAML without finetuning_type trains LoRA r8 on all Linears (its defaults); flags on estimate
    --config win over the YAML; 8-bit LoRA and unknown methods are one-line errors naming the key."""
    from helpers import run_cli

    from qwen_ds.consumers import finetune_from_yaml

    assert finetune_from_yaml({}, "x") == {"finetune": "lora", "lora_rank": 8, "lora_alpha": None,
                                           "lora_targets": "all-linear"}
    assert finetune_from_yaml({"finetuning_type": "full"}, "x") == {"finetune": "full"}
    assert finetune_from_yaml({"finetuning_type": "freeze"}, "x") == {"finetune": "freeze", "freeze_layers": 2,
                                                                      "trainable_modules": "all"}
    with pytest.raises(InputError, match="x: quantization_bit 8"):
        finetune_from_yaml({"quantization_bit": 8}, "x")
    with pytest.raises(InputError, match="x: finetuning_type 'oft'"):
        finetune_from_yaml({"finetuning_type": "oft"}, "x")
    with pytest.raises(InputError, match="x: lora_rank is 'sixteen'"):
        finetune_from_yaml({"lora_rank": "sixteen"}, "x")
    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                               "bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 3}}))
    yaml = tmp_path / "sft.yaml"
    yaml.write_text("per_device_train_batch_size: 1\nbf16: true\ncutoff_len: 2048\n")
    base = ("estimate", "-m", "Qwen3-8B", "-g", "A100-80GB", "--gpus-per-node", "8", "--config", str(cfg),
            "--training-args", str(yaml), "--json")
    rc, out, err = run_cli(*base)
    assert rc == 0, err
    assert json.loads(out)["trainable_params"] == lora_params(load_model("Qwen3-8B"), "all-linear", 8)
    rc, out, err = run_cli(*base, "--finetune", "full")
    assert rc == 0 and json.loads(out)["trainable_params"] == count_params(load_model("Qwen3-8B")).total
    yaml.write_text("finetuning_type: lora\nquantization_bit: 8\n")
    rc, _, err = run_cli(*base)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "quantization_bit 8" in err and "sft.yaml" in err
