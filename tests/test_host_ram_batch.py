"""Issue #13 points 5 and 6: host RAM at load (load_peak, max-not-sum) and the batch as the user's decision."""

import dataclasses
import json

import pytest
from helpers import run_cli

from qwen_ds import api
from qwen_ds.errors import InputError
from qwen_ds.estimator import MemoryBreakdown, Term, estimate
from qwen_ds.hardware import Cluster, get_gpu
from qwen_ds.knobs import Plan, Workload
from qwen_ds.models import count_params, load_model
from qwen_ds.planner import Constraints, Network, search
from qwen_ds.planner.search import SearchResult, distinct_by_grad_accum, evaluate
from qwen_ds.reports import plan_text
from qwen_ds.units import GIB

Q8 = load_model("Qwen3-8B")
P8 = count_params(Q8).total
H100 = get_gpu("H100-SXM")
BASE = Plan(loss="chunked")


def mem(model, nodes, gpn, **knobs):
    return estimate(model, Cluster(H100, nodes, gpn), Workload(seq_len=4096), Plan(**knobs))


def load_term(b: MemoryBreakdown) -> Term:
    (t,) = [t for t in b.cpu_terms if t.name == "load_peak"]
    return t


# --------------------------------------------------------------------------- 5. host RAM at load


def test_load_peak_zero2_is_every_rank_holding_the_bf16_model():
    b = mem(Q8, 1, 8, zero_stage=2, precision="bf16")
    t = load_term(b)
    assert t.bytes == 8 * 2 * P8 and t.phase == "load"
    assert b.cpu_total_bytes_per_node == 8 * 2 * P8  # was 0 before the term
    assert any("HfDeepSpeedConfig / zero.Init, or low_cpu_mem_usage" in n for n in b.notes)


@pytest.mark.parametrize("zero", [0, 1])
def test_load_peak_zero0_1_and_infer_zero0_also_hold_the_whole_model(zero):
    assert load_term(mem(Q8, 2, 8, zero_stage=zero)).bytes == 8 * 2 * P8
    b = estimate(Q8, Cluster(H100, 1, 4), Workload(mode="infer", seq_len=1024), Plan(zero_stage=0, tp=4))
    assert load_term(b).bytes == 4 * 2 * P8


def test_load_peak_fp32_loads_four_bytes():
    assert load_term(mem(Q8, 1, 8, zero_stage=2, precision="fp32")).bytes == 8 * 4 * P8


@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_load_peak_zero3_is_one_partition_per_rank(nodes):
    b = mem(Q8, nodes, 8, zero_stage=3)
    world = nodes * 8
    assert load_term(b).bytes == 8 * -(-2 * P8 // world)
    assert "zero.Init" in load_term(b).formula
    assert not any("low_cpu_mem_usage" in n for n in b.notes)  # ZeRO-3 already loads under zero.Init


def test_cpu_total_is_max_of_load_peak_and_steady_terms_not_the_sum():
    # steady offload dominates: Llama-3.1-70B ZeRO-3 + CPU optimizer offload on 2 x 8
    b = estimate(load_model("Llama-3.1-70B"), Cluster(get_gpu("V100-32GB"), 2, 8), Workload(seq_len=4096),
                 Plan(zero_stage=3, precision="fp16", offload_optimizer="cpu"))
    steady = sum(t.bytes for t in b.cpu_terms if t.phase != "load")
    load = load_term(b).bytes
    assert 0 < load < steady
    assert b.cpu_total_bytes_per_node == steady < steady + load
    assert not b.cpu_peak_at_load
    # load dominates: ZeRO-2 + CPU optimizer offload of Qwen3-8B keeps 16 B x P / 8 per rank, loads 2 B x P per rank
    b = mem(Q8, 2, 8, zero_stage=2, offload_optimizer="cpu")
    steady = sum(t.bytes for t in b.cpu_terms if t.phase != "load")
    assert 0 < steady < load_term(b).bytes
    assert b.cpu_total_bytes_per_node == load_term(b).bytes and b.cpu_peak_at_load
    # the same rule on hand-made terms, both ways round
    mb = MemoryBreakdown(gpu_terms=(), cpu_terms=(Term("a", 5, "persistent", ""), Term("b", 4, "persistent", ""),
                                                   Term("load_peak", 7, "load", "")))
    assert mb.cpu_total_bytes_per_node == 9 and mb.cpu_steady_bytes_per_node == 9
    assert dataclasses.replace(mb, cpu_terms=mb.cpu_terms[:1] + mb.cpu_terms[2:]).cpu_total_bytes_per_node == 7


def test_estimate_json_and_text_show_the_load_peak():
    rc, out, err = run_cli("estimate", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "1", "--gpus-per-node", "8",
                           "--zero", "2", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["load_peak_bytes_per_node"] == 8 * 2 * P8 == d["cpu_total_bytes_per_node"]
    assert d["cpu_terms"] == {"load_peak": 8 * 2 * P8}
    rc, out, _ = run_cli("estimate", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "1", "--gpus-per-node", "8",
                         "--zero", "3", "--offload-optimizer", "cpu")
    assert "load_peak" in out and "(max of steady and load peak)" in out


def test_plan_rejects_zero_0_to_2_for_ram_at_load():
    rc, out, err = run_cli("plan", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "1", "--gpus-per-node", "8",
                           "--cpu-mem-per-node", "64", "--top", "3")
    assert rc == 0, err
    rejected = dict(line.strip().split(": ", 1) for line in out.split("rejected:\n")[1].splitlines() if line.strip())
    want = (f"CPU at load: 8 ranks x 16-bit weights = {8 * 2 * P8 / GIB:.0f} GiB > 64 GiB per node; "
            "load with zero.Init / HfDeepSpeedConfig (ZeRO-3) or low_cpu_mem_usage")
    # ZeRO-0..2 fit the H100s (no RAM limit: they are accepted), so their RAM reason is the one shown
    free = api.plan("Qwen3-8B", "H100-SXM", nodes=1, gpus_per_node=8)
    assert {"ZeRO-1", "ZeRO-2"} <= {c.family for c in free.accepted}
    assert rejected["ZeRO-1"] == want and rejected["ZeRO-2"] == want
    assert all(not f.startswith(("ZeRO-0", "ZeRO-1", "ZeRO-2")) for f in
               (ln.split("  ")[1] for ln in out.splitlines()[2:5]))  # only ZeRO-3 plans remain in the table


def test_rejected_family_shows_ram_reason_even_when_members_overflow_the_gpu():
    # ZeRO-2 Qwen3-8B: micro 64 without checkpointing overflows the GPU; micro 1 fits the GPU but not 64 GiB of RAM
    res = search(Q8, Cluster(H100, 1, 8), Workload(seq_len=4096), BASE,
                 Constraints(cpu_mem_per_node=64 * GIB, fixed={"zero_stage": 2, "offload_optimizer": "none",
                                                               "offload_param": "none"}))
    assert not res.accepted
    assert any("usable per GPU" in c.reason for c in res.rejected)
    assert dict(res.rejected_families())["ZeRO-2"].startswith("CPU at load: 8 ranks x 16-bit weights")


# --------------------------------------------------------------------------- 6. the batch as a decision


def test_without_global_batch_the_planner_uses_ga_1_and_a_bubble_under_20_pct_for_pipelines():
    """GA 1 without pipeline stages; with them the fewest micro-batches (a power of two) whose 1F1B bubble
    (p - 1) / (m + p - 1) is under 20 %: 8 for pp 2, 16 for pp 4, 32 for pp 8, 64 for pp 16."""
    from qwen_ds.planner.throughput import bubble_fraction

    m, c = load_model("Qwen3-32B"), Cluster(H100, 2, 8)
    res = search(m, c, Workload(seq_len=4096), BASE, Constraints(train_pp=True))
    plans = [x.plan for x in res.accepted + res.rejected]
    assert {p.pp for p in plans} >= {1, 2, 4, 8}
    assert all(p.grad_accum == {1: 1, 2: 8, 4: 16, 8: 32, 16: 64}[p.pp] for p in plans)
    assert all(bubble_fraction(p.pp, p.grad_accum) < 0.2 <= bubble_fraction(p.pp, p.grad_accum // 2)
               for p in plans if p.pp > 1)
    assert res.grad_accum_fixed_at_one
    text = plan_text(m, c, Workload(seq_len=4096), res, 3, None)
    assert "global batch: micro x GA x dp" in text and "pass --global-batch N" in text


def test_plan_text_says_ga_1_and_global_batch_lifts_it():
    rc, out, err = run_cli("plan", "-m", "Qwen3-32B", "-g", "H100-SXM", "--nodes", "2")
    assert rc == 0, err
    best = api.plan("Qwen3-32B", "H100-SXM", nodes=2).best
    assert best.plan.grad_accum == 1
    n = best.plan.micro_batch * 16
    assert (f"global batch: micro x 1 x dp = {best.plan.micro_batch} x 1 x 16 = {n} sequences for #1 "
            "(GA 1: pass --global-batch N to let the planner trade micro-batch for grad-accum)") in out
    found = api.plan("Qwen3-32B", "H100-SXM", nodes=2, options=api.SearchOptions(global_batch=256))
    assert {c.plan.micro_batch * c.plan.grad_accum * 16 for c in found.accepted} == {256}
    assert any(c.plan.grad_accum > 1 for c in found.accepted)
    assert "global batch:" not in found.text()
    pinned = api.plan("Qwen3-32B", "H100-SXM", nodes=2, grad_accum=4)
    assert {c.plan.grad_accum for c in pinned.accepted} == {4} and "global batch:" not in pinned.text()


@pytest.mark.parametrize("command", ["plan", "gen-config"])
def test_indivisible_global_batch_is_exit_2_with_nearest_sizes(command, tmp_path):
    extra = ["-o", str(tmp_path / "out")] if command == "gen-config" else []
    rc, out, err = run_cli(command, "-m", "Qwen3-32B", "-g", "H100-SXM", "--nodes", "2", "--global-batch", "100",
                           *extra)
    assert rc == 2 and "Traceback" not in err
    assert "--global-batch 100" in err and "nearest valid: 96 or 112" in err and "smallest dp here is 16" in err
    assert not (tmp_path / "out").exists()
    rc, _, err = run_cli(command, "-m", "Qwen3-32B", "-g", "H100-SXM", "--nodes", "2", "--global-batch", "7", *extra)
    assert rc == 2 and "nearest valid: 16 (" in err


def test_indivisible_global_batch_from_the_api_and_a_pinned_micro_batch():
    with pytest.raises(InputError, match=r"dp 16; micro-batch 4\); nearest valid: 64 or 128 "):
        api.plan("Qwen3-32B", "H100-SXM", nodes=2, micro_batch=4, options=api.SearchOptions(global_batch=100))
    # divisible: no error
    ok = api.plan("Qwen3-32B", "H100-SXM", nodes=2, micro_batch=4, options=api.SearchOptions(global_batch=128))
    assert ok.accepted and {c.plan.grad_accum for c in ok.accepted} == {2}


def test_plans_differing_only_by_ga_are_shown_once_the_fastest():
    m, c, w = load_model("Qwen3-32B"), Cluster(H100, 2, 8), Workload(seq_len=4096)
    plan = dataclasses.replace(BASE, zero_stage=3, offload_optimizer="cpu", micro_batch=4, checkpointing=True)
    cands = [evaluate(m, c, w, dataclasses.replace(plan, grad_accum=g), Constraints(), Network()) for g in (1, 4, 16)]
    assert all(x.reason is None for x in cands)
    ranked = sorted(cands, key=lambda k: -k.time.tokens_per_s)
    assert len({x.time.tokens_per_s for x in cands}) == 3  # GA changes the step time: they are different rows today
    kept = distinct_by_grad_accum(ranked)
    assert kept == [ranked[0]] and kept[0].plan.grad_accum == 16  # offload amortized best over 16 micro-steps
    other = evaluate(m, c, w, dataclasses.replace(plan, micro_batch=2), Constraints(), Network())
    assert distinct_by_grad_accum(ranked + [other]) == [ranked[0], other]
    res = SearchResult(tuple(ranked), (), 3)
    rows = [ln for ln in plan_text(m, c, w, res, 8, None).splitlines() if ln[:1].isdigit()]
    assert len(rows) == 1 and rows[0].split()[-2] == f"{ranked[0].time.tokens_per_s:,.0f}"


def test_estimate_counts_cpu_ram_in_fits_when_given():
    """--cpu-mem-per-node: the load peak (8 ranks x 16-bit Qwen3-8B = 122 GiB) does not fit 64 GiB: exit 3."""
    args = ("estimate", "-m", "Qwen3-8B", "-g", "H100-SXM", "--zero", "2")
    rc, out, _ = run_cli(*args, "--cpu-mem-per-node", "64")
    assert rc == 3 and "DOES NOT FIT in CPU RAM: 122.05 GiB > 64.00 GiB per node" in out and "load peak" in out
    rc, out, _ = run_cli(*args, "--cpu-mem-per-node", "64", "--json")
    doc = json.loads(out)
    assert rc == 3 and doc["fits"] is False and doc["cpu_fits"] is False and doc["gpu_total_bytes"] < doc["gpu_memory_bytes"]
    rc, out, _ = run_cli(*args, "--cpu-mem-per-node", "128", "--json")
    assert rc == 0 and json.loads(out)["fits"] is True
    rc, out, _ = run_cli(*args, "--json")  # no limit: reported, not checked
    assert rc == 0 and "cpu_fits" not in json.loads(out)
    rc, _, err = run_cli(*args, "--cpu-mem-per-node", "nan")
    assert rc == 2 and "--cpu-mem-per-node" in err
