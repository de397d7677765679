"""Analytical plan search: enumerate candidates, filter by the estimator, rank by the step-time model.

What DeepSpeed's autotuner does with trial runs, done with formulas in about a second. Every
rejection keeps its reason, so the output can say why a whole family (e.g. ZeRO-2) was dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import InputError, finite_positive
from ..estimator import Layout, MemoryBreakdown, estimate, planned
from ..hardware import Cluster
from ..models.spec import ModelSpec
from ..knobs import Plan, Workload, data_parallel
from ..sharding import autotp_unsupported
from .throughput import pipeline_grad_accum
from ..units import GIB, compute_bytes
from .throughput import Network, StepTime, step_time

# (optimizer, params); params-only offload is ZeRO-Inference's layout
OFFLOADS = (("none", "none"), ("cpu", "none"), ("cpu", "cpu"), ("none", "cpu"), ("nvme", "none"), ("nvme", "nvme"),
            ("none", "nvme"))


@dataclass(frozen=True)
class Constraints:
    """Limits and fixed knobs. ``fixed`` maps Plan field names to values the user pinned."""

    headroom: float = 0.92  # usable fraction of GPU memory (the rest: allocator slack, spikes)
    cpu_mem_per_node: int | None = None  # bytes; None = unlimited (reported, not filtered)
    allow_nvme: bool = False
    global_batch: int | None = None  # sequences per optimizer step
    max_micro_batch: int = 64
    train_tp: bool = False  # opt in to search AutoTP training (dense families; not with pp)
    train_pp: bool = False  # opt in to search pipeline stages (runtime/pipeline.py builds them)
    fixed: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.1 <= self.headroom <= 1.0:
            raise InputError(f"--headroom {self.headroom}: choose a fraction of GPU memory between 0.1 and 1.0")
        if self.global_batch is not None and self.global_batch < 1:
            raise InputError(f"--global-batch {self.global_batch}: must be a positive integer")
        if self.cpu_mem_per_node is not None and not self.cpu_mem_per_node > 0:
            raise InputError(f"--cpu-mem-per-node {self.cpu_mem_per_node / GIB:g}: must be a finite number > 0 (GiB)")


def cpu_mem_bytes(gib: float | None) -> int | None:
    """--cpu-mem-per-node GiB -> bytes; None = unlimited. NaN and inf fail here, before int() would raise."""
    return None if gib is None else int(finite_positive("--cpu-mem-per-node", gib) * GIB)


@dataclass(frozen=True)
class Candidate:
    """A plan the search weighed: its layout and memory (as estimate computes them), its step time
    when it fits, else the reason it was rejected."""

    plan: Plan
    layout: Layout
    memory: MemoryBreakdown
    time: StepTime | None
    reason: str | None  # None = accepted

    @property
    def family(self) -> str:
        p = self.plan
        off = "" if (p.offload_optimizer, p.offload_param) == ("none", "none") else \
            f" + offload opt={p.offload_optimizer} param={p.offload_param}"
        par = "".join(f" {k}{v}" for k, v in (("tp", p.tp), ("pp", p.pp)) if v > 1)
        return f"ZeRO-{p.zero_stage}{off}{par}"


@dataclass(frozen=True)
class SearchResult:
    accepted: tuple[Candidate, ...]  # best first; plans that differ only by GA appear once (the fastest)
    rejected: tuple[Candidate, ...]
    considered: int
    #: GA was not the planner's to choose freely: no --global-batch and no pinned grad_accum, so every
    #: candidate ran GA 1 (GA pp for pipeline plans); reports.plan_text says so
    grad_accum_fixed_at_one: bool = False

    def rejected_families(self) -> list[tuple[str, str]]:
        """(family, reason of its least-bad member) for families with no accepted plan. Least bad: the
        member with the fewest GPU bytes. A member rejected for CPU RAM fitted the GPU, so it is
        always below any member rejected for GPU memory: a family that fits the GPUs but not the
        node's RAM shows its RAM reason."""
        ok = {c.family for c in self.accepted}
        best: dict[str, Candidate] = {}
        for c in self.rejected:
            if c.family in ok:
                continue
            cur = best.get(c.family)
            if cur is None or c.memory.gpu_total_bytes < cur.memory.gpu_total_bytes:
                best[c.family] = c
        return [(f, c.reason or "") for f, c in sorted(best.items())]


def distinct_by_grad_accum(ranked: list[Candidate]) -> list[Candidate]:
    """Keep the first (fastest, when ``ranked`` is best first) of plans that differ only by grad_accum."""
    seen, out = set(), []
    for c in ranked:
        key = tuple(getattr(c.plan, f.name) for f in dataclasses.fields(c.plan) if f.name != "grad_accum")
        if key not in seen:
            seen.add(key)
            out.append(c)
    return out


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _powers_of_two(limit: int) -> list[int]:
    out, m = [], 1
    while m <= limit:
        out.append(m)
        m *= 2
    return out


def candidates(model: ModelSpec, cluster: Cluster, workload: Workload, base: Plan, c: Constraints) -> Iterator[Plan]:
    fixed = c.fixed
    world, gpn = cluster.world_size, cluster.gpus_per_node
    infer = workload.mode == "infer"
    tps = [fixed["tp"]] if "tp" in fixed else (
        [t for t in _divisors(gpn, gpn)
         if model.num_heads % t == 0 and (t == 1 or not autotp_unsupported(model, training=not infer))]
        if (infer or c.train_tp) else [1])
    pps = [fixed["pp"]] if "pp" in fixed else (
        [p for p in _divisors(world, 16) if model.num_layers % p == 0] if (c.train_pp and not infer) else [1])
    stages = [fixed["zero_stage"]] if "zero_stage" in fixed else ([0, 3] if infer else [0, 1, 2, 3])
    ckpts = [fixed["checkpointing"]] if "checkpointing" in fixed else ([False] if infer else [False, True])
    for zero in stages:
        for oo, op in OFFLOADS:
            if "offload_optimizer" in fixed and oo != fixed["offload_optimizer"]:
                continue
            if "offload_param" in fixed and op != fixed["offload_param"]:
                continue
            if (oo == "nvme" or op == "nvme") and not c.allow_nvme:
                continue
            if infer and oo != "none":
                continue
            if op != "none" and zero != 3 or oo != "none" and zero == 0:
                continue
            for tp in tps:
                for pp in pps:
                    if (pp > 1 and zero >= 2 or world % (tp * pp) or (infer and zero == 3 and tp > 1)
                            or (not infer and tp > 1 and pp > 1)):  # AutoTP has no PipelineModule policy
                        continue
                    dp = data_parallel(world, tp, pp)
                    micro_opts = [fixed["micro_batch"]] if "micro_batch" in fixed else _powers_of_two(c.max_micro_batch)
                    for micro in micro_opts:
                        if infer:
                            gas = [1]
                        elif c.global_batch is not None:
                            if c.global_batch % (micro * dp):
                                continue
                            gas = [c.global_batch // (micro * dp)]
                        elif "grad_accum" in fixed:
                            gas = [fixed["grad_accum"]]
                        else:
                            # the batch is the user's decision: without --global-batch, GA 1; pipeline
                            # plans the fewest micro-batches that keep the bubble under 20 % (the seed's
                            # target). A larger free GA only amortized communication by silently growing
                            # the global batch (Qwen3-32B on 16 GPUs became 1,024 sequences);
                            # --global-batch lets the planner trade micro-batch for GA within the batch.
                            gas = [pipeline_grad_accum(pp)]
                        for ga in gas:
                            for ckpt in ckpts:
                                yield dataclasses.replace(base, zero_stage=zero, offload_optimizer=oo,
                                                          offload_param=op, tp=tp,
                                                          pp=pp, micro_batch=micro, grad_accum=ga, checkpointing=ckpt)


def cpu_reason(mem: MemoryBreakdown, plan: Plan, cluster: Cluster, limit: int) -> str:
    """Why a plan's host RAM does not fit: the load peak when it sets the node total, else the steady terms."""
    total, steady = mem.cpu_total_bytes_per_node, mem.cpu_steady_bytes_per_node
    if not mem.cpu_peak_at_load:
        load = mem.cpu_load_peak_bytes_per_node
        also = f" (the load peak, {load / GIB:.0f} GiB, exceeds it too)" if load > limit else ""
        return f"CPU {total / GIB:.0f} GiB > {limit / GIB:.0f} GiB per node{also}"
    if plan.zero_stage == 3:
        what = f"{cluster.gpus_per_node} ranks x 1/{cluster.world_size} of the weights (zero.Init)"
        fix = "use more nodes or fewer ranks per node"
    else:
        what = f"{cluster.gpus_per_node} ranks x {'16-bit' if compute_bytes(plan.precision) == 2 else 'fp32'} weights"
        fix = "load with zero.Init / HfDeepSpeedConfig (ZeRO-3) or low_cpu_mem_usage"
    also = f" (steady terms {steady / GIB:.0f} GiB exceed it too)" if steady > limit else ""
    return f"CPU at load: {what} = {total / GIB:.0f} GiB > {limit / GIB:.0f} GiB per node{also}; {fix}"


def batch_error(global_batch: int, open_plans: list[Plan], world: int) -> InputError:
    """--global-batch that no (micro-batch, dp) of the candidates divides: name the nearest valid sizes."""
    units = sorted({p.micro_batch * data_parallel(world, p.tp, p.pp) for p in open_plans})
    dps = sorted({data_parallel(world, p.tp, p.pp) for p in open_plans})
    micros = sorted({p.micro_batch for p in open_plans})
    below = max((global_batch // u * u for u in units if global_batch >= u), default=None)
    above = min(-(-global_batch // u) * u for u in units)
    near = f"{below} or {above}" if below else f"{above}"
    mb = f"micro-batch {micros[0]}" if len(micros) == 1 else f"micro-batch {micros[0]}-{micros[-1]}"
    return InputError(f"--global-batch {global_batch}: no plan splits it into micro-batch x grad-accum x dp "
                      f"(dp {', '.join(map(str, dps))}; {mb}); nearest valid: {near} "
                      f"(multiples of micro-batch x dp, the smallest dp here is {dps[0]}); pass one to --global-batch")


def evaluate(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan, c: Constraints,
             net: Network) -> Candidate:
    lay, mem = planned(model, cluster, workload, plan)
    usable = int(cluster.gpu.memory_bytes * c.headroom)
    if mem.gpu_total_bytes > usable:
        return Candidate(plan, lay, mem, None, f"{mem.gpu_total_bytes / GIB:.1f} GiB > {usable / GIB:.1f} GiB "
                                          "usable per GPU "
                                          f"({c.headroom:.0%} of {cluster.gpu.name})")
    if c.cpu_mem_per_node is not None and mem.cpu_total_bytes_per_node > c.cpu_mem_per_node:
        return Candidate(plan, lay, mem, None, cpu_reason(mem, plan, cluster, c.cpu_mem_per_node))
    if workload.mode == "infer":
        from .inference_time import inference_time

        return Candidate(plan, lay, mem, inference_time(model, cluster, workload, plan, net), None)
    return Candidate(plan, lay, mem, step_time(model, cluster, workload, plan, net), None)


def search(model: ModelSpec, cluster: Cluster, workload: Workload, base: Plan, c: Constraints | None = None,
           net: Network | None = None) -> SearchResult:
    c, net = c or Constraints(), net or Network()
    accepted, rejected = [], []
    n = 0
    for plan in candidates(model, cluster, workload, base, c):
        n += 1
        cand = evaluate(model, cluster, workload, plan, c, net)
        (rejected if cand.reason else accepted).append(cand)
    train = workload.mode == "train"
    if not n and train and c.global_batch is not None:
        open_plans = list(candidates(model, cluster, workload, base, dataclasses.replace(c, global_batch=None)))
        if open_plans:  # the batch, not the pinned knobs, left nothing to weigh
            raise batch_error(c.global_batch, open_plans, cluster.world_size)
    accepted.sort(key=lambda k: (-k.time.tokens_per_s, k.memory.gpu_total_bytes))
    ga_one = train and c.global_batch is None and "grad_accum" not in c.fixed
    return SearchResult(tuple(distinct_by_grad_accum(accepted)), tuple(rejected), n, ga_one)


def smallest_cluster_without_offload(model: ModelSpec, cluster: Cluster, workload: Workload, base: Plan, c: Constraints,
                                     net: Network | None = None, max_nodes: int = 256) -> tuple[int, Candidate] | None:
    """Fewest nodes of this shape on which some plan fits without any offload. The leanest plan
    (ZeRO-3, micro-batch 1, checkpointing) shrinks with every node added, so it decides feasibility
    cheaply; the full search then runs once, at that size."""
    net = net or Network()
    lean = dataclasses.replace(base, zero_stage=3, offload_optimizer="none", offload_param="none", tp=1, pp=1,
                               micro_batch=1, grad_accum=1, checkpointing=True)
    usable = cluster.gpu.memory_bytes * c.headroom
    for nodes in range(cluster.nodes + 1, max_nodes + 1):
        bigger = dataclasses.replace(cluster, nodes=nodes)
        if estimate(model, bigger, workload, lean).gpu_total_bytes > usable:
            continue
        fixed = {**c.fixed, "offload_optimizer": "none", "offload_param": "none"}
        res = search(model, bigger, workload, base, dataclasses.replace(c, fixed=fixed, global_batch=None), net)
        if res.accepted:
            return nodes, res.accepted[0]
    return None
