"""Analytical plan search: enumerate candidates, filter by the estimator, rank by the step-time model.

What DeepSpeed's autotuner does with trial runs, done with formulas in about a second. Every
rejection keeps its reason, so the output can say why a whole family (e.g. ZeRO-2) was dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import InputError, finite_positive
from ..estimator import Layout, MemoryBreakdown, estimate, layout
from ..hardware import Cluster
from ..models.spec import ModelSpec
from ..knobs import Plan, Workload, data_parallel
from ..sharding import autotp_unsupported
from ..units import GIB
from .throughput import Network, StepTime, step_time

FREE_GRAD_ACCUM = (1, 4, 16)
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
    train_tp: bool = False  # the built-in runtime trains with TP=1; opt in for AutoTP training
    train_pp: bool = False  # PP needs a PipelineModule script; opt in to search it
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
    accepted: tuple[Candidate, ...]  # best first
    rejected: tuple[Candidate, ...]
    considered: int

    def rejected_families(self) -> list[tuple[str, str]]:
        """(family, reason of its least-bad member) for families with no accepted plan."""
        ok = {c.family for c in self.accepted}
        best: dict[str, Candidate] = {}
        for c in self.rejected:
            if c.family in ok:
                continue
            cur = best.get(c.family)
            if cur is None or c.memory.gpu_total_bytes < cur.memory.gpu_total_bytes:
                best[c.family] = c
        return [(f, c.reason or "") for f, c in sorted(best.items())]


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
        [t for t in _divisors(gpn, gpn) if model.num_heads % t == 0 and (t == 1 or not autotp_unsupported(model))]
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
                    if pp > 1 and zero >= 2 or world % (tp * pp) or (infer and zero == 3 and tp > 1):
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
                        else:  # global batch left open: grad-accum may amortize communication and offload
                            gas = [g * pp for g in FREE_GRAD_ACCUM] if pp > 1 else list(FREE_GRAD_ACCUM)
                        for ga in gas:
                            for ckpt in ckpts:
                                yield dataclasses.replace(base, zero_stage=zero, offload_optimizer=oo,
                                                          offload_param=op, tp=tp,
                                                          pp=pp, micro_batch=micro, grad_accum=ga, checkpointing=ckpt)


def evaluate(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan, c: Constraints,
             net: Network) -> Candidate:
    lay = layout(model, cluster, plan)
    mem = estimate(model, cluster, workload, plan, lay)
    usable = int(cluster.gpu.memory_bytes * c.headroom)
    if mem.gpu_total_bytes > usable:
        return Candidate(plan, lay, mem, None, f"{mem.gpu_total_bytes / GIB:.1f} GiB > {usable / GIB:.1f} GiB "
                                          "usable per GPU "
                                          f"({c.headroom:.0%} of {cluster.gpu.name})")
    if c.cpu_mem_per_node is not None and mem.cpu_total_bytes_per_node > c.cpu_mem_per_node:
        return Candidate(plan, lay, mem, None, f"CPU {mem.cpu_total_bytes_per_node / GIB:.0f} GiB > "
                                          f"{c.cpu_mem_per_node / GIB:.0f} GiB per node")
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
    accepted.sort(key=lambda k: (-k.time.tokens_per_s, k.memory.gpu_total_bytes))
    return SearchResult(tuple(accepted), tuple(rejected), n)


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
