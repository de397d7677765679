"""Each estimator term against hand-computed values from reference/qwen-models.md and deepspeed.md."""

import dataclasses

import pytest

from qwen_ds.calibration import constant
from qwen_ds.errors import InputError
from qwen_ds.estimator import estimate, layout, plan_layout
from qwen_ds.estimator import activations, inference
from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.models import count_params, load_model
from qwen_ds.knobs import Plan, Workload
from qwen_ds.sharding import largest_gathered

NEXT = "Qwen3-Next-80B-A3B"
LLAMA70 = "Llama-3.1-70B"
P70 = 70_553_706_496
PNEXT = 79_674_391_296


def terms(model, gpu, nodes, gpn, plan, workload=Workload()):
    b = estimate(load_model(model), Cluster(get_gpu(gpu), nodes, gpn), workload, plan)
    return b, b.terms_dict()


def test_zero3_model_states_are_16_bytes_per_param_over_dp():
    # reference/qwen-models.md §5(b): 16Ψ/16 = 70.0 GB per GPU for 70B on 16 GPUs, does not fit a V100-32GB
    b, t = terms(LLAMA70, "V100-32GB", 2, 8, Plan(zero_stage=3, precision="fp16"))
    states = t["params"] + t["gradients"] + t["master_weights_fp32"] + t["optimizer_states"]
    assert states == pytest.approx(16 * P70 / 16, rel=1e-6)
    assert not b.fits


def test_zero3_optimizer_offload_keeps_only_fp16_param_partition():
    # seed: "9.8 GB per card" is the optimizer-offload figure: 2Ψ/N = 8.82 GB params (+ gathered layer)
    b, t = terms(LLAMA70, "V100-32GB", 2, 8, Plan(zero_stage=3, precision="fp16", offload_optimizer="cpu"))
    assert t["params"] == pytest.approx(2 * P70 / 16, rel=1e-6)
    assert t["gradients"] == 0 and t["master_weights_fp32"] == 0 and t["optimizer_states"] == 0
    # CPU per node: 16 B per partition element x 8 ranks = 8Ψ
    assert b.cpu_total_bytes_per_node == pytest.approx(16 * P70 / 16 * 8, rel=1e-6)


def test_stage_partitioning_rules():
    m, c = load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 1, 8)
    P = count_params(m).total
    for stage, (params, grads, opt) in {0: (2 * P, 2 * P, 12 * P), 1: (2 * P, 2 * P, 12 * P / 8),
                                        2: (2 * P, 2 * P / 8, 12 * P / 8), 3: (2 * P / 8, 2 * P / 8, 12 * P / 8)}.items():
        t = estimate(m, c, Workload(), Plan(zero_stage=stage)).terms_dict()
        assert t["params"] == pytest.approx(params, rel=1e-6), stage
        assert t["gradients"] == pytest.approx(grads, rel=1e-6), stage
        assert t["master_weights_fp32"] + t["optimizer_states"] == pytest.approx(opt, rel=1e-6), stage


def test_fp32_training_has_no_master_copy_and_4_byte_params():
    t = estimate(load_model("Qwen3-0.6B"), Cluster(get_gpu("A100-80GB"), 1, 1), Workload(seq_len=512), Plan(zero_stage=0, precision="fp32")).terms_dict()
    P = count_params(load_model("Qwen3-0.6B")).total
    assert t["params"] == 4 * P and t["gradients"] == 4 * P and t["master_weights_fp32"] == 0 and t["optimizer_states"] == 8 * P


def test_fp8_changes_no_model_state_bytes():
    a = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan(precision="bf16"))[1]
    b = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan(precision="fp8"))[1]
    for k in ("params", "gradients", "master_weights_fp32", "optimizer_states"):
        assert a[k] == b[k]


def test_zero3_sub_group_bounds_step_grads():
    t = terms(NEXT, "H100-SXM", 2, 8, Plan())[1]
    assert t["step_fp32_grads"] == 4 * 1_000_000_000  # sub_group_size 1e9 < Ψ/16
    t = terms("Qwen3-0.6B", "H100-SXM", 1, 8, Plan())[1]
    assert t["step_fp32_grads"] == 4 * -(-count_params(load_model("Qwen3-0.6B")).total // 8)


def test_zero3_gathered_unit_is_the_moe_block_for_qwen3_next():
    t = terms(NEXT, "H100-SXM", 2, 8, Plan())[1]
    L, pf = 1_614_809_088, int(0.9 * 2048 * 2048)
    assert t["zero3_gathered_params"] == 2 * (L + pf)
    assert t["zero3_gathered_grads"] == 2 * L


def test_full_offload_gpu_matches_deepspeed_4L_within_prefetch():
    # DeepSpeed estimate_zero3_model_states_mem_needs, offload_param=cpu + offload_optimizer=cpu: 4L per GPU
    ds = pytest.importorskip("deepspeed.runtime.zero.stage3")
    m = load_model("Qwen3-8B")
    c = count_params(m)
    _, gpu_bytes, _ = ds.estimate_zero3_model_states_mem_needs(c.total, largest_gathered(m)[0], num_gpus_per_node=8, num_nodes=1,
                                                               cpu_offload=True, cpu_offload_params=True, zero_init=True)
    t = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan(offload_optimizer="cpu", offload_param="cpu"))[1]
    pf = int(0.9 * 4096 * 4096)
    ours = t["params"] + t["zero3_gathered_params"] + t["zero3_gathered_grads"]
    assert ours == gpu_bytes + 2 * pf


def test_zero3_no_offload_matches_deepspeed_apart_from_its_2_extra_bytes():
    # DeepSpeed: 18 B/param / G + 4L. Ours: 16 B/param persistent / G + 4L gathered (fp32 step grads are a
    # separate, sub-group-bounded step term). The difference is exactly DeepSpeed's extra 2P/G.
    ds = pytest.importorskip("deepspeed.runtime.zero.stage3")
    m = load_model("Qwen3-8B")
    c = count_params(m)
    _, gpu_bytes, _ = ds.estimate_zero3_model_states_mem_needs(c.total, largest_gathered(m)[0], num_gpus_per_node=8, num_nodes=1,
                                                               cpu_offload=False, cpu_offload_params=False, zero_init=True)
    t = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan())[1]
    ours = (t["params"] + t["gradients"] + t["master_weights_fp32"] + t["optimizer_states"]
            + t["zero3_gathered_grads"] + t["zero3_gathered_params"] - 2 * int(0.9 * 4096 ** 2))
    assert gpu_bytes - ours == pytest.approx(2 * c.total / 8, rel=1e-6)


def test_dense_mlp_and_norm_activation_formulas():
    m = load_model("Qwen3-8B")
    assert activations.dense_mlp_bytes(m, "hf") == 2 * 4096 + 8 * 12288  # 106,496 B/token measured (§4)
    assert activations.norm_bytes(m, "hf") == 6 * 4096 + 4  # 24,580 measured
    assert activations.norm_bytes(load_model(NEXT), "hf") == 8 * 2048 + 4  # 16,388 measured


def test_fitted_layer_formulas_reproduce_reference_measurements():
    # reference/qwen-models.md §4 measured (HF eager, saved_tensors_hooks); the reference folded the
    # per-forward RoPE cos/sin (4·rot·s / s = 4·rot bytes per token) into the attention layer
    q8, nxt = load_model("Qwen3-8B"), load_model(NEXT)
    layer8 = 2 * activations.norm_bytes(q8, "hf") + activations.attention_bytes(q8, "hf") + activations.dense_mlp_bytes(q8, "hf")
    assert layer8 + 4 * 128 == 215_848
    assert activations.gated_attention_bytes(nxt, "hf") + 4 * 64 == 84_360  # partial rotary: rot = 256/4
    assert activations.gated_deltanet_bytes(nxt, "hf") == 365_762
    e64 = dataclasses.replace(nxt, num_experts=64)
    assert activations.moe_bytes(e64, "hf") == 135_810


def test_checkpointing_keeps_2h_per_layer_and_one_layer():
    m, c = load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 1, 8)
    on = estimate(m, c, Workload(seq_len=2048), Plan(micro_batch=2, checkpointing=True)).terms_dict()
    off = estimate(m, c, Workload(seq_len=2048), Plan(micro_batch=2, checkpointing=False)).terms_dict()
    tokens = 2 * 2048
    assert on["activations_checkpoints"] == 2 * 4096 * 36 * tokens
    assert off["activations"] == 36 * on["activations_recompute"]


def test_hf_loss_path_is_6V_saved_plus_backward_transient_and_chunked_is_bounded():
    hf = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan(loss="hf"), Workload(seq_len=4096))[1]
    V = 151_936
    assert hf["logits_and_logsoftmax"] == 6 * V * 4096
    assert hf["loss_backward"] == constant("loss_backward_transient_per_vocab") * V * 4096
    ch = terms("Qwen3-8B", "H100-SXM", 1, 8, Plan(loss="chunked"), Workload(seq_len=4096))[1]
    # 1024-token chunks of a 4096-token sequence: a quarter of the HF path's loss memory
    assert 4 * ch["loss_chunk"] == hf["logits_and_logsoftmax"] + hf["loss_backward"]
    assert "logits_and_logsoftmax" not in ch


def test_activations_scale_linearly_with_tokens_without_checkpointing():
    a = terms("Qwen3-4B", "H100-SXM", 1, 8, Plan(checkpointing=False, micro_batch=1), Workload(seq_len=1024))[1]
    b = terms("Qwen3-4B", "H100-SXM", 1, 8, Plan(checkpointing=False, micro_batch=2), Workload(seq_len=1024))[1]
    assert b["activations"] == 2 * a["activations"]


def test_kv_cache_only_on_full_attention_layers():
    # reference §3: Qwen3-Next 24,576 B/token bf16 (12 of 48 layers); Qwen3-8B 147,456
    plan = Plan(zero_stage=0, precision="bf16")
    assert inference.kv_bytes_per_token(load_model(NEXT), plan, 1) == 24_576
    assert inference.kv_bytes_per_token(load_model("Qwen3-8B"), plan, 1) == 147_456
    assert inference.kv_bytes_per_token(load_model("Qwen3-30B-A3B"), plan, 1) == 98_304
    assert inference.kv_bytes_per_token(load_model(NEXT), plan, 2) == 12_288  # 2 KV heads split over TP 2
    assert inference.kv_bytes_per_token(load_model(NEXT), plan, 4) == 12_288  # replicated when tp > nKV


def test_gdn_state_per_sequence():
    # reference §3: 36 layers x (conv 8192*4*2 + recurrent 32*128*128*4) = 77,856,768 B = 74.25 MiB
    assert inference.gdn_state_bytes_per_sequence(load_model(NEXT), Plan(zero_stage=0), 1) == 77_856_768
    assert inference.gdn_state_bytes_per_sequence(load_model("Qwen3-8B"), Plan(zero_stage=0), 1) == 0


def test_inference_weights_split_by_tp_only_where_autotp_splits():
    """AutoTP splits the Linear projections; embedding, head, norms, routers and the fused MoE experts
    stay whole on every rank (measured: tests/test_runtime.py::test_autotp_shards_what_the_estimator_says)."""
    w = Workload(mode="infer", seq_len=4096, new_tokens=0)
    dense = count_params(load_model("Qwen3-8B"))
    whole = dense.embedding + dense.lm_head + dense.final_norm + sum(lp.norms for lp in dense.layers) \
        + 2 * 128 * len(dense.layers)  # q_norm and k_norm (head_dim each) per layer
    _, t = terms("Qwen3-8B", "H100-SXM", 1, 4, Plan(zero_stage=0, tp=4, micro_batch=1), w)
    assert t["weights"] == 2 * (whole + -(-(dense.total - whole) // 4))
    _, moe = terms("Qwen3-30B-A3B", "H100-SXM", 1, 4, Plan(zero_stage=0, tp=4, micro_batch=1), w)
    m = load_model("Qwen3-30B-A3B")
    experts = 3 * m.num_experts * m.moe_intermediate_size * m.hidden_size * m.num_layers
    assert 2 * experts < moe["weights"] < 2 * (experts + count_params(m).total // 4)  # ~56 GiB, not total / 4 (14 GiB)
    with pytest.raises(InputError, match="--tp 1 with --zero 3"):
        terms(NEXT, "H200", 1, 4, Plan(zero_stage=0, tp=4, micro_batch=1), w)


def test_inference_kv_grows_with_context():
    w = Workload(mode="infer", seq_len=32768, new_tokens=0)
    b1, t1 = terms(NEXT, "H200", 1, 2, Plan(zero_stage=0, tp=1, micro_batch=1), w)
    assert t1["weights"] == 2 * PNEXT
    assert t1["kv_cache"] == 24_576 * 32768  # 12 full-attention layers x K,V x 2 heads x 256 x 2 B
    _, t2 = terms(NEXT, "H200", 1, 2, Plan(zero_stage=0, tp=1, micro_batch=1), dataclasses.replace(w, new_tokens=32768))
    assert t2["kv_cache"] == 2 * t1["kv_cache"]
    assert not b1.fits  # 159 GB of bf16 weights on one 141 GB H200


def test_pipeline_first_stage_carries_embedding_and_in_flight_microbatches():
    m, c = load_model("Qwen3-8B"), Cluster(get_gpu("A100-80GB"), 1, 8)
    lay = layout(m, c, Plan(zero_stage=1, pp=4))
    cnt = count_params(m)
    per_layer = cnt.layers[0].total
    # DeepSpeed's parameter-balanced partition of 36 layers + embedding, norm and head over 4 stages:
    # 7 | 11 | 11 | 7 layers, the embedding with the first 7 and the head with the last 7
    assert lay.stage_params == (cnt.embedding + 7 * per_layer, 11 * per_layer, 11 * per_layer,
                                7 * per_layer + cnt.final_norm + cnt.lm_head)
    assert sum(lay.stage_params) == cnt.total
    assert lay.params_per_mp_rank == 11 * per_layer and lay.stage == 1 and lay.layers_per_stage == 11
    assert not lay.first_stage and not lay.last_stage
    # 15 % lighter than 9 layers a stage with the embedding or the head on an end stage
    assert lay.params_per_mp_rank < 0.9 * (9 * per_layer + cnt.lm_head + cnt.final_norm)
    # 1F1B: stage s holds p - s micro-batches in flight (at most grad_accum)
    w, ga1, ga8 = Workload(seq_len=1024), Plan(zero_stage=1, pp=4, grad_accum=1, checkpointing=False), \
        Plan(zero_stage=1, pp=4, grad_accum=8, checkpointing=False)
    for stage, in_flight in ((0, 4), (1, 3), (3, 1)):
        one, eight = (estimate(m, c, w, p, layout(m, c, p, training=True, stage=stage)).terms_dict()
                      for p in (ga1, ga8))
        assert eight["activations"] == in_flight * one["activations"]
    # the estimate is the fullest stage's: stage 1 (11 layers x 3 in flight) over stage 0 (7 layers x 4)
    assert plan_layout(m, c, w, ga8).stage == 1
    full = estimate(m, c, w, ga8).gpu_total_bytes
    assert full == max(estimate(m, c, w, ga8, layout(m, c, ga8, training=True, stage=s)).gpu_total_bytes
                       for s in range(4))


def test_breakdown_totals_add_up():
    b, _ = terms(NEXT, "A100-80GB", 2, 8, Plan())
    by = {ph: sum(t.bytes for t in b.gpu_terms if t.phase == ph) for ph in ("persistent", "fwd_bwd", "loss", "recompute", "step", "outside")}
    assert b.gpu_allocated_bytes == by["persistent"] + max(by["fwd_bwd"] + max(by["loss"], by["recompute"]), by["step"])
    assert b.gpu_reserved_bytes == int(b.gpu_allocated_bytes * (1 + constant("fragmentation")))
    assert b.gpu_total_bytes == b.gpu_reserved_bytes + by["outside"]


def test_loss_and_recompute_peaks_are_exclusive_with_checkpointing():
    # measured on H200 (benchmarks/results/activation_gpu_h200_2026-11-28.md): with checkpointing the
    # loss transients are freed before the first layer is recomputed
    b, t = terms("Qwen3-0.6B", "H200", 1, 1, Plan(zero_stage=0, micro_batch=2), Workload(seq_len=4096))
    loss = t["logits_and_logsoftmax"] + t["loss_backward"]
    assert loss > t["activations_recompute"]
    assert b.backward_peak_bytes == t["activations_checkpoints"] + t["final_norm_and_head"] + loss
    assert b.peak_phase == "loss backward"


def test_bad_degrees_raise_input_error():
    m, c = load_model("Qwen3-8B"), Cluster(get_gpu("A100-80GB"), 1, 8)
    with pytest.raises(InputError, match="does not divide the 8 GPUs"):
        estimate(m, c, Workload(), Plan(zero_stage=1, tp=3))
    with pytest.raises(InputError, match="exceeds the 36 layers"):
        estimate(m, Cluster(get_gpu("A100-80GB"), 8, 8), Workload(), Plan(zero_stage=1, pp=64))
    # 36 layers over 5 stages: DeepSpeed's partition does not need a divisor
    five = layout(m, Cluster(get_gpu("A100-80GB"), 1, 5), Plan(zero_stage=1, pp=5))
    assert len(five.stage_params) == 5 and sum(five.stage_params) == count_params(m).total
    with pytest.raises(InputError, match="needs --zero 3"):
        Plan(zero_stage=2, offload_param="cpu")
    with pytest.raises(InputError, match="pipeline"):
        Plan(zero_stage=3, pp=2)


def test_reserved_slack_follows_the_allocator_and_parameter_offload():
    """calibration.json: expandable segments 8 %, torch's default allocator 18 %, and ZeRO-3 parameter offload its
    own (40 % / 62 %: parameters fetched from the host come and go in every layer; measured on an H200, #16)."""
    m, c, w = load_model("Qwen3-4B"), Cluster(get_gpu("H200"), 1, 1), Workload(seq_len=4096)
    ratio = {}
    for alloc in ("expandable", "default"):
        for op in ("none", "cpu"):
            b = estimate(m, c, w, Plan(zero_stage=3, offload_param=op, micro_batch=4, allocator=alloc))
            ratio[alloc, op] = b.gpu_reserved_bytes / b.gpu_allocated_bytes
    assert ratio["expandable", "none"] == pytest.approx(1 + constant("fragmentation"), rel=1e-6)
    assert ratio["default", "none"] == pytest.approx(1 + constant("fragmentation_default_allocator"), rel=1e-6)
    assert ratio["expandable", "cpu"] == pytest.approx(1 + constant("fragmentation_param_offload"), rel=1e-6)
    assert ratio["default", "cpu"] == pytest.approx(1 + constant("fragmentation_param_offload_default_allocator"), rel=1e-6)
    assert ratio["expandable", "none"] < ratio["default", "none"] < ratio["expandable", "cpu"] < ratio["default", "cpu"]


def test_zero0_step_holds_two_fp32_gradient_buffers():
    """ZeRO-0 (DeepSpeed's bf16 optimizer): 8 B per parameter of fp32 gradients in the step, so a Qwen3-4B plan peaks
    at 24 B per parameter there, as measured on an H200 whatever the micro-batch; ZeRO-1/2 keep 4 B per partition."""
    m, c, w = load_model("Qwen3-4B"), Cluster(get_gpu("H200"), 1, 1), Workload(seq_len=4096)
    n = count_params(m).total
    for zero, per in ((0, 8), (1, 4), (2, 4)):
        b = estimate(m, c, w, Plan(zero_stage=zero, micro_batch=1, checkpointing=True, loss="chunked"))
        assert b.terms_dict()["step_fp32_grads"] == per * n
    b = estimate(m, c, w, Plan(zero_stage=0, micro_batch=1, checkpointing=True, loss="chunked"))
    assert b.gpu_allocated_bytes == pytest.approx(24 * n, rel=0.01)  # the step is the peak: 2+2+4+8+8
