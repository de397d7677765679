"""Planner: monotonicity, agreement with the estimator, every rejection reason, round trip to DeepSpeed."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest

from qwen_ds.errors import InputError
from qwen_ds.estimator import estimate
from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.models import load_model
from qwen_ds.knobs import Plan, Workload
from qwen_ds.planner import Constraints, Network, search, smallest_cluster_without_offload, step_time
from qwen_ds.units import GIB

BASE = Plan(loss="chunked")


def best(model, gpu, nodes, gpn, workload=Workload(seq_len=4096), cons=Constraints()):
    res = search(load_model(model), Cluster(get_gpu(gpu), nodes, gpn), workload, BASE, cons)
    return res.accepted[0] if res.accepted else None


@pytest.mark.parametrize("model,gpu", [("Qwen3-8B", "H100-SXM"), ("Qwen3-30B-A3B", "A100-80GB"), ("Qwen3-1.7B", "A100-40GB")])
def test_more_gpus_in_a_node_never_slower(model, gpu):
    rates = [b.time.tokens_per_s for g in (1, 2, 4, 8) if (b := best(model, gpu, 1, g))]
    assert rates == sorted(rates)


@pytest.mark.parametrize("model,gpu", [("Qwen3-8B", "H100-SXM"), ("Qwen3-Next-80B-A3B", "H100-SXM")])
def test_more_nodes_never_slower(model, gpu):
    rates = [b.time.tokens_per_s for n in (1, 2, 3, 4, 6) if (b := best(model, gpu, n, 8))]
    assert len(rates) >= 3
    assert rates == sorted(rates)


def test_planner_filter_agrees_with_estimator():
    m, c = load_model("Qwen3-14B"), Cluster(get_gpu("A100-80GB"), 1, 8)
    cons = Constraints(headroom=0.9)
    res = search(m, c, Workload(seq_len=2048), BASE, cons)
    usable = c.gpu.memory_bytes * 0.9
    assert res.accepted and res.rejected
    for cand in res.accepted:
        assert estimate(m, c, Workload(seq_len=2048), cand.plan).gpu_total_bytes <= usable
    for cand in res.rejected:
        assert cand.memory.gpu_total_bytes > usable and "usable per GPU" in cand.reason


def test_a_plan_that_fits_is_never_rejected():
    m, c, w = load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 1, 8), Workload(seq_len=4096)
    plan = dataclasses.replace(BASE, zero_stage=2, micro_batch=2, grad_accum=1, checkpointing=True)
    assert estimate(m, c, w, plan).gpu_total_bytes <= c.gpu.memory_bytes * 0.92
    pinned = {"zero_stage": 2, "offload_optimizer": "none", "offload_param": "none", "micro_batch": 2, "grad_accum": 1,
              "checkpointing": True, "tp": 1, "pp": 1}
    res = search(m, c, w, BASE, Constraints(fixed=pinned))
    assert [x.plan for x in res.accepted] == [plan]


def test_rejection_reason_gpu_memory_names_the_numbers():
    res = search(load_model("Qwen3-Next-80B-A3B"), Cluster(get_gpu("A100-80GB"), 1, 8), Workload(seq_len=4096), BASE, Constraints())
    fams = dict(res.rejected_families())
    assert "ZeRO-2" in fams and "GiB > 73.6 GiB usable per GPU (92% of A100-80GB)" in fams["ZeRO-2"]
    assert all(c.plan.offload_optimizer != "none" for c in res.accepted)  # training does not fit without offload


def test_rejection_reason_cpu_memory():
    res = search(load_model("Qwen3-Next-80B-A3B"), Cluster(get_gpu("A100-80GB"), 1, 8), Workload(seq_len=4096), BASE,
                 Constraints(cpu_mem_per_node=512 * GIB))
    assert not res.accepted
    reasons = [c.reason for c in res.rejected if c.reason.startswith("CPU")]
    assert reasons and "> 512 GiB per node" in reasons[0]


def test_nvme_only_when_allowed_and_pipeline_only_with_zero_0_1():
    m, c = load_model("Qwen3-8B"), Cluster(get_gpu("A100-80GB"), 2, 8)
    res = search(m, c, Workload(seq_len=2048), BASE, Constraints())
    assert all("nvme" not in (x.plan.offload_optimizer, x.plan.offload_param) for x in res.accepted + res.rejected)
    res = search(m, c, Workload(seq_len=2048), BASE, Constraints(allow_nvme=True, train_pp=True))
    plans = [x.plan for x in res.accepted + res.rejected]
    assert any(p.offload_param == "nvme" for p in plans)
    assert any(p.pp > 1 for p in plans) and all(p.zero_stage <= 1 for p in plans if p.pp > 1)
    assert all(36 % p.pp == 0 for p in plans)


def test_global_batch_is_respected():
    res = search(load_model("Qwen3-4B"), Cluster(get_gpu("H100-SXM"), 2, 8), Workload(seq_len=4096), BASE, Constraints(global_batch=256))
    assert res.accepted
    for cand in res.accepted + res.rejected:
        p = cand.plan
        assert p.micro_batch * p.grad_accum * (16 // (p.tp * p.pp)) == 256


def test_time_model_parts_are_visible_and_consistent():
    m, c, w = load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 2, 8), Workload(seq_len=4096)
    t = step_time(m, c, w, dataclasses.replace(BASE, zero_stage=3, micro_batch=2, grad_accum=4), Network())
    assert t.step_s == pytest.approx((t.compute_s + t.recompute_s + t.exposed_comm_s) * t.bubble_factor + t.offload_s
                                     + t.cpu_optimizer_s + t.gpu_optimizer_s + t.zero3_fetch_s)
    assert t.gpu_optimizer_s > 0 and t.parts()["gpu_optimizer_s"] == t.gpu_optimizer_s  # ZeRO-3 updates a partition
    assert t.tokens_per_step == 2 * 4 * 4096 * 16
    assert 0 < t.mfu < 1
    slow = step_time(m, c, w, dataclasses.replace(BASE, zero_stage=3, micro_batch=2, grad_accum=4), Network(inter_node_gbps=25))
    assert slow.comm_s > t.comm_s


def test_zero3_micro_steps_wait_for_the_hooks_host_time_only_when_their_kernels_are_shorter():
    """calibration.json zero3_host_s_per_tensor: a ZeRO-3 micro-step takes max(GPU time, host time of the hooks),
    the host time fixed per gathered tensor. Small micro-batches are host-bound (measured on an H200: Qwen3-4B mb 2
    x GA 8 at 8,584 tokens/s, mb 16 x GA 1 at 10,572); ZeRO 0-2 have no such term."""
    from qwen_ds.calibration import constant
    from qwen_ds.sharding import gathered_tensors

    m, c, w = load_model("Qwen3-4B"), Cluster(get_gpu("H200"), 1, 1), Workload(seq_len=4096)
    z3 = dataclasses.replace(BASE, zero_stage=3, checkpointing=False, loss="chunked")
    small = step_time(m, c, w, dataclasses.replace(z3, micro_batch=2, grad_accum=8))
    big = step_time(m, c, w, dataclasses.replace(z3, micro_batch=16, grad_accum=1, checkpointing=True))
    host = gathered_tensors(m, z3.buckets(m.hidden_size)["param_persistence_threshold"]) * constant("zero3_host_s_per_tensor")
    gpu_micro = (small.compute_s + small.recompute_s + small.exposed_comm_s) / 8
    assert gpu_micro < host and small.zero3_fetch_s == pytest.approx(8 * (host - gpu_micro))
    assert big.zero3_fetch_s == 0.0 and big.tokens_per_s > small.tokens_per_s  # the order measured
    z0 = step_time(m, c, w, dataclasses.replace(z3, zero_stage=0, micro_batch=2, grad_accum=8))
    assert z0.zero3_fetch_s == 0.0 and z0.tokens_per_s > 1.5 * small.tokens_per_s


def test_parameter_offload_streams_every_pass_at_the_measured_rate():
    """calibration.json param_offload_gbps: each pass (forward, recompute, backward) fetches the rank's bf16
    partition from host memory at the rate DeepSpeed reached, not the PCIe link's."""
    from qwen_ds.calibration import constant

    m, c, w = load_model("Qwen3-4B"), Cluster(get_gpu("H200"), 1, 1), Workload(seq_len=4096)
    base = dataclasses.replace(BASE, zero_stage=3, micro_batch=16, grad_accum=1, loss="chunked")
    on = step_time(m, c, w, dataclasses.replace(base, offload_param="cpu", checkpointing=True))
    off = step_time(m, c, w, dataclasses.replace(base, offload_param="cpu", checkpointing=False))
    from qwen_ds.models.counts import count_params

    per_pass = 2 * count_params(m).total / (constant("param_offload_gbps") * 1e9)
    assert on.offload_s == pytest.approx(3 * per_pass) and off.offload_s == pytest.approx(2 * per_pass)
    assert on.offload_s > 10  # 24 GB at 1.47 GB/s: the measured 16 s, not PCIe's 0.5 s


def test_fp8_speeds_up_only_the_converted_linear_flops():
    """FP8 speeds up the projections torchao converts by the measured factor (calibration.json fp8_gemm_speedup,
    casts included; not the 2x peak ratio); the head, attention scores and the fused MoE experts stay bf16: a dense
    model gains far more than a MoE one, and neither the whole factor."""
    from qwen_ds.calibration import constant
    from qwen_ds.models.counts import model_flops_per_token
    from qwen_ds.sharding import fp8_matmul_params

    c, w = Cluster(get_gpu("H100-SXM"), 1, 8), Workload(seq_len=4096)
    plan = dataclasses.replace(BASE, zero_stage=3, micro_batch=2, grad_accum=4)
    s = constant("fp8_gemm_speedup")
    gain = {}
    for name in ("Qwen3-8B", "Qwen3-30B-A3B"):
        m = load_model(name)
        bf16, fp8 = step_time(m, c, w, plan), step_time(m, c, w, dataclasses.replace(plan, precision="fp8"))
        gain[name] = bf16.compute_s / fp8.compute_s
        f = 6 * fp8_matmul_params(m) / model_flops_per_token(m, 4096)  # the converted share of the FLOPs
        assert gain[name] == pytest.approx(1 / (1 - f * (1 - 1 / s)))
    assert 1.0 < gain["Qwen3-30B-A3B"] < 1.1 < gain["Qwen3-8B"] < s < 2.0


def test_flops_per_token_count_the_tied_head():
    from qwen_ds.models.counts import count_params, model_flops_per_token

    tied, untied = load_model("Qwen3-4B"), load_model("Qwen3-8B")
    for m in (tied, untied):
        attention = 6 * 2 * (4096 / 2) * m.q_dim * m.num_layers
        head = m.vocab_size * m.hidden_size
        assert model_flops_per_token(m, 4096) == pytest.approx(6 * (count_params(m).active_non_embedding + head) + attention)


def test_pipeline_bubble():
    m, c, w = load_model("Qwen3-8B"), Cluster(get_gpu("A100-80GB"), 1, 8), Workload(seq_len=2048)
    t = step_time(m, c, w, dataclasses.replace(BASE, zero_stage=1, pp=4, grad_accum=8), Network())
    assert t.bubble_factor == pytest.approx((8 + 4 - 1) / 8)


def test_seed_scenario_qwen3_next_on_8_a100():
    """Training needs offload on 1 x 8 A100-80GB (CPU RAM shown), 3 nodes fit without it. Inference: AutoTP
    cannot run Qwen3-Next (DeepSpeed 0.19.8), so the 159 GB of weights are sharded by ZeRO-3 over the 8
    GPUs, which beats streaming them from CPU; TP is never offered."""
    m, c = load_model("Qwen3-Next-80B-A3B"), Cluster(get_gpu("A100-80GB"), 1, 8)
    res = search(m, c, Workload(seq_len=4096), BASE, Constraints())
    assert res.accepted and res.accepted[0].memory.cpu_total_bytes_per_node > 1000 * GIB
    nodes, cand = smallest_cluster_without_offload(m, c, Workload(seq_len=4096), BASE, Constraints())
    assert nodes == 3 and cand.plan.offload_optimizer == "none"
    inf = search(m, c, Workload(mode="infer", seq_len=8192, new_tokens=1024),
                 dataclasses.replace(BASE, zero_stage=0, micro_batch=8), Constraints(fixed={"micro_batch": 8}))
    top = inf.accepted[0]
    assert (top.plan.zero_stage, top.plan.offload_param, top.plan.tp) == (3, "none", 1)
    assert top.memory.terms_dict()["kv_cache"] == 24_576 * 8 * (8192 + 1024)
    assert all(x.plan.tp == 1 for x in inf.accepted + inf.rejected)
    assert [x.plan.offload_param for x in inf.accepted] == ["none", "cpu"]  # gathering over NVLink beats PCIe streaming


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, text=True)


def test_plan_cli_json_and_exit_codes(tmp_path):
    p = cli("plan", "-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", "--nodes", "1", "--gpus-per-node", "8", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["considered"] >= 100 and d["best"] and d["smallest_cluster_without_offload"]["nodes"] == 3
    assert {r["family"] for r in d["rejected_families"]} >= {"ZeRO-2", "ZeRO-3"}
    p = cli("plan", "-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", "--nodes", "1", "--gpus-per-node", "8", "--cpu-mem-per-node", "256")
    assert p.returncode == 3 and "rejected" in p.stdout
    p = cli("plan", "-m", "Qwen3-8B", "-g", "A100-80GB", "--headroom", "3")
    assert p.returncode == 2 and "--headroom" in p.stderr and "Traceback" not in p.stderr


def test_plan_explain_and_chart(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plan.png"
    p = cli("plan", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "1", "--gpus-per-node", "8", "--explain", "--chart", str(png), "--top", "4")
    assert p.returncode == 0, p.stderr
    assert "winner, memory:" in p.stdout and "winner, step time:" in p.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_best_plan_round_trips_through_gen_config_and_validate(tmp_path):
    out = tmp_path / "cfg"
    p = cli("gen-config", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "2", "--gpus-per-node", "8", "--global-batch", "128",
            "--loss", "chunked", "-o", str(out))
    assert p.returncode == 0, p.stderr
    plan_doc = json.loads((out / "plan.json").read_text())
    assert plan_doc["chosen_by"].startswith("planner")
    cons = Constraints(global_batch=128)
    res = search(load_model("Qwen3-8B"), Cluster(get_gpu("H100-SXM"), 2, 8), Workload(seq_len=4096), BASE, cons)
    chosen = res.accepted[0].plan
    assert {k: plan_doc["plan"][k] for k in ("zero_stage", "micro_batch", "grad_accum", "checkpointing")} == \
        {"zero_stage": chosen.zero_stage, "micro_batch": chosen.micro_batch, "grad_accum": chosen.grad_accum,
         "checkpointing": chosen.checkpointing}
    cfg = json.loads((out / "ds_config.json").read_text())
    assert cfg["train_batch_size"] == 128
    v = cli("validate", str(out / "ds_config.json"), "--nodes", "2", "--gpus-per-node", "8", "-m", "Qwen3-8B", "-g", "H100-SXM", "--json")
    assert v.returncode == 0, v.stdout + v.stderr
    report = json.loads(v.stdout)
    assert report["ok"] and report["memory"]["fits"]


def test_moe_inference_too_big_for_autotp_is_sharded_by_zero3():
    """AutoTP keeps Qwen3-235B-A22B's routed experts whole (423 GiB of bf16 on every GPU at any TP); ZeRO-3 shards them
    over the 8 H200s and beats streaming them from CPU. A dense model that fits still prefers plain replicas or AutoTP."""
    c, w = Cluster(get_gpu("H200"), 1, 8), Workload(mode="infer", seq_len=4096, new_tokens=512)
    base, cons = dataclasses.replace(BASE, zero_stage=0, micro_batch=8), Constraints(fixed={"micro_batch": 8})
    res = search(load_model("Qwen3-235B-A22B"), c, w, base, cons)
    assert [(x.plan.zero_stage, x.plan.offload_param) for x in res.accepted] == [(3, "none"), (3, "cpu")]
    assert all(x.plan.tp > 1 or x.plan.zero_stage == 0 for x in res.rejected) and len(res.rejected) == 4
    dense = search(load_model("Qwen3-32B"), c, w, base, cons)
    assert dense.accepted[0].plan.zero_stage == 0
    assert min(i for i, x in enumerate(dense.accepted) if x.plan.zero_stage == 3) > 0


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("kw,needle", [
    (dict(compute_efficiency=0), "--compute-efficiency 0: must be a finite number > 0 and <= 1"),
    (dict(compute_efficiency=NAN), "--compute-efficiency nan"), (dict(compute_efficiency=1.5), "--compute-efficiency 1.5"),
    (dict(compute_efficiency=-INF), "--compute-efficiency -inf"),
    (dict(inter_node_gbps=0), "--inter-node-gbps 0: must be a finite number > 0"), (dict(inter_node_gbps=NAN), "--inter-node-gbps nan"),
    (dict(inter_node_gbps=INF), "--inter-node-gbps inf"), (dict(inter_node_gbps=-100), "--inter-node-gbps -100"),
])
def test_network_refuses_rates_the_time_model_cannot_use(kw, needle):
    """Refused where the rates are built, so every command (also gen-config with every knob pinned,
    which never searches) is covered."""
    with pytest.raises(InputError) as info:
        Network(**kw)
    assert needle in str(info.value)


@pytest.mark.parametrize("gib", [NAN, INF, -INF, 0, -4])
def test_cpu_mem_per_node_must_be_finite_and_positive(gib):
    from qwen_ds.planner.search import cpu_mem_bytes

    with pytest.raises(InputError, match=r"--cpu-mem-per-node .*: must be a finite number > 0"):
        cpu_mem_bytes(gib)
    if math.isfinite(gib):
        with pytest.raises(InputError, match=r"--cpu-mem-per-node"):
            Constraints(cpu_mem_per_node=int(gib * GIB))


def test_cpu_mem_bytes_converts_gib():
    from qwen_ds.planner.search import cpu_mem_bytes

    assert cpu_mem_bytes(None) is None
    assert cpu_mem_bytes(1.5) == 3 * GIB // 2
