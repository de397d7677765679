"""The use cases behind the CLI, and qwen-ds's Python API: ``estimate``, ``plan``, ``generate`` and
``validate``, each returning a typed result. The commands in qwen_ds/commands only parse flags, call
one of these and print the result; nothing here imports click, torch or DeepSpeed.

Plan knobs are keywords named as in qwen_ds/knobs.py (``zero_stage``, ``micro_batch``, ``checkpointing``,
...); ``plan`` and ``generate`` search over the knobs not given (``pinned`` overrides which count as given).
Failures raise ``InputError`` (exit 2) or ``DoesNotFit`` (exit 3) with a one-line message.

    >>> from qwen_ds import estimate
    >>> estimate("Qwen3-8B", "H100-SXM", nodes=2, micro_batch=2).fits
    True
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass
from typing import Any, Collection

from .errors import InputError
from .estimator import Layout, MemoryBreakdown, planned
from .format import gib
from .hardware import GPU, Cluster, get_gpu
from .knobs import BY_NAME, SEARCHED, Plan, Workload
from .models import ModelSpec, load_model

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    model: ModelSpec
    cluster: Cluster
    workload: Workload
    plan: Plan


def cluster_shape(hostfile: str | None, nodes: int | None, gpus_per_node: int | None) -> tuple[int, int]:
    """(nodes, gpus_per_node) from a hostfile and/or the explicit numbers; they must agree."""
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if v is not None and v < 1:
            raise InputError(f"{flag} {v}: must be a positive integer")
    if hostfile:
        from .hostfile import read_hostfile

        hf = read_hostfile(hostfile)
        for flag, given, actual in (("--nodes", nodes, hf.nodes), ("--gpus-per-node", gpus_per_node, hf.gpus_per_node)):
            if given is not None and given != actual:
                raise InputError(f"{flag} {given} disagrees with --hostfile {hostfile} ({actual}); "
                                 "drop the flag or fix the hostfile")
        return hf.nodes, hf.gpus_per_node
    return (1 if nodes is None else nodes), (8 if gpus_per_node is None else gpus_per_node)


def check_precision(gpu: GPU, precision: str, mode: str) -> None:
    """bf16 needs compute capability >= 8.0, fp8 >= 8.9; refuse with the alternatives."""
    if precision == "bf16" and not gpu.bf16:
        raise InputError(f"--precision bf16: {gpu.name} (compute capability {gpu.compute_capability}) has no bf16; "
                         "use --precision fp16 (with loss scaling) or fp32")
    if precision == "fp8" and not gpu.fp8:
        alt = "bf16" if gpu.bf16 else "fp16"
        raise InputError(f"--precision fp8: {gpu.name} (compute capability {gpu.compute_capability}) "
                         "has no FP8 tensor cores "
                         f"(needs >= 8.9: L40S, H100, H200, B200); use --precision {alt}")
    if precision == "int8" and mode == "train":
        raise InputError("--precision int8 is for --mode infer (weights); for training use bf16, fp16, fp32 or fp8")


def inputs(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
           hostfile: str | None = None, **knobs: Any) -> Inputs:
    """Model, cluster, workload and plan from names and knobs; a knob not given takes its default
    (qwen_ds/knobs.py). Every problem is an InputError naming the flag."""
    unknown = sorted(set(knobs) - set(BY_NAME))
    if unknown:
        raise TypeError(f"unknown plan knob(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    kv = {name: knobs[name] if knobs.get(name) is not None else k.default for name, k in BY_NAME.items()}
    for name in ("seq_len", "micro_batch", "grad_accum", "tp", "pp"):
        if kv[name] < 1:
            raise InputError(f"{BY_NAME[name].flag} {kv[name]}: must be a positive integer")
    n, gpn = cluster_shape(hostfile, nodes, gpus_per_node)
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    gpu_spec = gpu if isinstance(gpu, GPU) else get_gpu(gpu)
    cluster = Cluster(gpu_spec, n, gpn)
    mode = kv["mode"]
    precision = kv["precision"] or ("bf16" if gpu_spec.bf16 else "fp16")
    check_precision(gpu_spec, precision, mode)
    zero = kv["zero_stage"] if kv["zero_stage"] is not None else (3 if mode == "train" else 0)
    workload = Workload(mode=mode, seq_len=kv["seq_len"], new_tokens=kv["new_tokens"])
    if mode == "infer" and kv["pp"] > 1:
        raise InputError(f"--pp {kv['pp']} with --mode infer: DeepSpeed inference has no pipeline stages "
                         "(init_inference splits layers by AutoTP only); use --tp N (DeepSpeed-Inference) or --zero 3 "
                         "(ZeRO-Inference), --pp 1")
    if mode == "infer" and kv["finetune"] != "full":
        raise InputError(f"--finetune {kv['finetune']} with --mode infer: fine-tuning methods are for training; "
                         "drop --finetune (inference serves the merged or base weights)")
    if mode == "infer" and zero == 3 and kv["tp"] > 1:
        raise InputError(f"--tp {kv['tp']} with --mode infer --zero 3: ZeRO-Inference has no tensor parallelism; "
                         "use --zero 0 --tp N (DeepSpeed-Inference) or --tp 1")
    plan_ = Plan(zero_stage=zero, precision=precision,
                 **{k: kv[k] for k in ("offload_optimizer", "offload_param", "tp", "pp", "micro_batch", "grad_accum",
                                       "checkpointing", "loss", "kernels", "finetune", "lora_rank", "lora_alpha",
                                       "lora_targets", "freeze_layers", "trainable_modules")},
                 **({"allocator": kv["allocator"]} if kv["allocator"] else {}))  # else Plan's default
    return Inputs(spec, cluster, workload, plan_)


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Estimate:
    """Memory per GPU and per node of one plan, term by term."""

    model: ModelSpec
    cluster: Cluster
    workload: Workload
    plan: Plan
    layout: Layout
    memory: MemoryBreakdown
    #: CPU RAM per node the plan may use (bytes, --cpu-mem-per-node); None: not checked, only reported
    cpu_mem_per_node: int | None = None

    @property
    def cpu_fits(self) -> bool:
        return self.cpu_mem_per_node is None or self.memory.cpu_total_bytes_per_node <= self.cpu_mem_per_node

    @property
    def fits(self) -> bool:
        """The GPU holds the plan and, with a CPU RAM limit, so does each node's RAM (load peak included)."""
        return self.memory.fits and self.cpu_fits

    def to_json(self) -> dict[str, Any]:
        from .reports import estimate_json

        out = estimate_json(self.model, self.cluster, self.workload, self.plan, self.layout, self.memory)
        if self.cpu_mem_per_node is not None:
            out.update(cpu_mem_per_node=self.cpu_mem_per_node, cpu_fits=self.cpu_fits, fits=self.fits)
        return out

    def text(self) -> str:
        from .reports import estimate_text

        out = estimate_text(self.model, self.cluster, self.workload, self.plan, self.layout, self.memory)
        if not self.cpu_fits:
            m = self.memory
            what = ("the load peak (every rank materialises the model before DeepSpeed shards it; load with "
                    "zero.Init / HfDeepSpeedConfig under ZeRO-3, or low_cpu_mem_usage)" if m.cpu_peak_at_load
                    else "the offloaded states")
            out += (f"\nDOES NOT FIT in CPU RAM: {gib(m.cpu_total_bytes_per_node)} GiB > "
                    f"{gib(self.cpu_mem_per_node)} GiB per node (--cpu-mem-per-node), set by {what}")
        return out


def estimate_inputs(i: Inputs, plan_: Plan | None = None) -> Estimate:
    p = plan_ or i.plan
    lay, mem = planned(i.model, i.cluster, i.workload, p)
    return Estimate(i.model, i.cluster, i.workload, p, lay, mem)


def estimate(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
             hostfile: str | None = None, cpu_mem_per_node: float | None = None, **knobs: Any) -> Estimate:
    """Memory of one plan: ``estimate("Qwen3-8B", "H100-SXM", nodes=2, zero_stage=3, micro_batch=2)``.
    ``cpu_mem_per_node`` (GiB): each node's RAM, counted in ``fits`` (load peak included)."""
    from .planner.search import cpu_mem_bytes

    limit = cpu_mem_bytes(cpu_mem_per_node)
    est = estimate_inputs(inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs))
    return dataclasses.replace(est, cpu_mem_per_node=limit)


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SearchOptions:
    """The planner's limits (the CLI's --global-batch, --headroom, ... flags)."""

    global_batch: int | None = None
    headroom: float = 0.92
    cpu_mem_per_node: float | None = None  # GiB
    allow_nvme: bool = False
    allow_tp: bool = False
    allow_pp: bool = False
    inter_node_gbps: float | None = None
    compute_efficiency: float = 0.55

    def constraints(self, pinned: dict[str, Any]):
        from .planner import Constraints
        from .planner.search import cpu_mem_bytes

        nvme = self.allow_nvme or "nvme" in (pinned.get("offload_optimizer"), pinned.get("offload_param"))
        return Constraints(headroom=self.headroom, cpu_mem_per_node=cpu_mem_bytes(self.cpu_mem_per_node),
                           allow_nvme=nvme,
                           global_batch=self.global_batch, train_tp=self.allow_tp, train_pp=self.allow_pp, fixed=pinned)

    def network(self):
        from .planner import Network

        return Network(inter_node_gbps=self.inter_node_gbps, compute_efficiency=self.compute_efficiency)


@dataclass(frozen=True)
class PlanSearch:
    """The plans that fit, best first (each with its memory, layout and step time), the families
    rejected and why, and for training without a no-offload fit the smallest cluster that has one."""

    inputs: Inputs
    result: Any  # planner.SearchResult
    options: SearchOptions
    smallest: tuple[int, Any] | None = None  # (nodes, planner.Candidate)
    #: full training without a no-offload fit: the best LoRA r16 plan without offload on this cluster, if one fits
    lora_fit: Any = None  # planner.Candidate

    @property
    def accepted(self) -> tuple:
        return self.result.accepted

    @property
    def best(self):
        return self.result.accepted[0] if self.result.accepted else None

    def best_estimate(self) -> Estimate | None:
        """The winner's memory, as estimate reports it (from the search: nothing recomputed)."""
        c = self.best
        i = self.inputs
        return None if c is None else Estimate(i.model, i.cluster, i.workload, c.plan, c.layout, c.memory)

    def to_json(self, top: int = 8) -> dict[str, Any]:
        from .reports import describe

        i, res, smallest = self.inputs, self.result, self.smallest
        return {
            "model": i.model.name, "gpu": i.cluster.gpu.name, "nodes": i.cluster.nodes,
            "gpus_per_node": i.cluster.gpus_per_node,
            "mode": i.workload.mode, "considered": res.considered, "accepted": len(res.accepted),
            "best": [describe(c) for c in res.accepted[:top]],
            "grad_accum_fixed_at_one": res.grad_accum_fixed_at_one,
            "rejected_families": [{"family": f, "reason": r} for f, r in res.rejected_families()],
            "smallest_cluster_without_offload": None if smallest is None else
            {"nodes": smallest[0], "gpus_per_node": i.cluster.gpus_per_node, "plan": describe(smallest[1])},
            "lora_r16_without_offload": None if self.lora_fit is None else describe(self.lora_fit),
        }

    def text(self, top: int = 8, explain: bool = False) -> str:
        from .reports import plan_text

        i = self.inputs
        out = plan_text(i.model, i.cluster, i.workload, self.result, top, self.smallest,
                        i.workload.mode == "infer" or self.options.allow_tp, self.lora_fit)
        best = self.best_estimate()
        if explain and best is not None:
            out += "\n\nwinner, memory:\n" + best.text()
            out += "\n\nwinner, step time: " + ", ".join(f"{k} {v:.3f}" for k, v in self.best.time.parts().items())
        return out


def _pinned(knobs: dict[str, Any], pinned: Collection[str] | None) -> dict[str, Any]:
    """The searched knobs the caller fixed: those named in ``pinned``, else those given (not None)."""
    names = set(pinned) if pinned is not None else {k for k, v in knobs.items() if v is not None}
    return {k: knobs[k] for k in SEARCHED if k in names and knobs.get(k) is not None}


def search_inputs(i: Inputs, pinned: dict[str, Any], options: SearchOptions, smallest: bool = True) -> PlanSearch:
    from .planner import search, smallest_cluster_without_offload

    cons, net = options.constraints(pinned), options.network()
    res = search(i.model, i.cluster, i.workload, i.plan, cons, net)
    if not res.considered and pinned:  # the pinned knobs break a layout rule: name it (e.g. tp x pp training)
        from .estimator import layout

        layout(i.model, i.cluster, i.plan, training=i.workload.mode == "train")
    small = None
    no_offload_fits = any(c.plan.offload_optimizer == c.plan.offload_param == "none" for c in res.accepted)
    lora = None
    if smallest and i.workload.mode == "train" and not no_offload_fits:
        small = smallest_cluster_without_offload(i.model, i.cluster, i.workload, i.plan, cons, net)
        if i.plan.finetune == "full":  # would LoRA fit here without offload? (issue #17: say so)
            lplan = dataclasses.replace(i.plan, finetune="lora", lora_rank=16, lora_targets="all-linear")
            lres = search(i.model, i.cluster, i.workload, lplan, cons, net)
            lora = next((c for c in lres.accepted if c.plan.offload_optimizer == c.plan.offload_param == "none"), None)
    return PlanSearch(i, res, options, small, lora)


def plan(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
         hostfile: str | None = None, pinned: Collection[str] | None = None, options: SearchOptions | None = None,
         **knobs: Any) -> PlanSearch:
    """The fastest plans that fit: ``plan("Qwen3-32B", "H100-SXM", nodes=2).best.plan``. Knobs given
    are pinned; the planner chooses the rest."""
    i = inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs)
    return search_inputs(i, _pinned(knobs, pinned), options or SearchOptions())


#: the methods ``plan --compare-finetune`` weighs, in its row order
COMPARED_METHODS = ("full", "lora", "qlora", "freeze")


@dataclass(frozen=True)
class FinetuneComparison:
    """``plan --compare-finetune``: the planner's search for each fine-tuning method on the same cluster and workload
    (the other knobs as given): the fastest plan of each, or why the method was refused."""

    searches: tuple[tuple[str, PlanSearch | None, str | None], ...]  # (method, search, refusal)

    def to_json(self) -> dict[str, Any]:
        from .reports import describe, trainable_params

        rows = []
        for method, s, why in self.searches:
            row: dict[str, Any] = {"finetune": method, "refused": why}
            if s is not None:
                i = s.inputs
                row.update(trainable_params=trainable_params(i.model, i.workload, i.plan),
                           best=None if s.best is None else describe(s.best),
                           smallest_cluster_without_offload=None if s.smallest is None else
                           {"nodes": s.smallest[0], "plan": describe(s.smallest[1])})
            rows.append(row)
        return {"methods": rows}

    def text(self) -> str:
        from .reports import finetune_comparison_text

        return finetune_comparison_text(self.searches)


def compare_finetune(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None,
                     gpus_per_node: int | None = None, hostfile: str | None = None,
                     pinned: Collection[str] | None = None, options: SearchOptions | None = None,
                     **knobs: Any) -> FinetuneComparison:
    """``plan`` once per method of COMPARED_METHODS (``finetune`` in knobs is replaced): full vs LoRA vs QLoRA vs
    freeze side by side. A method the other knobs rule out (QLoRA at fp32) is kept with its reason."""
    out = []
    for method in COMPARED_METHODS:
        try:
            s = plan(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, pinned=pinned,
                     options=options, **{**knobs, "finetune": method})
            out.append((method, s, None))
        except InputError as exc:
            if method == "full":
                raise
            out.append((method, None, str(exc)))
    return FinetuneComparison(tuple(out))


def problems_text(problems, source: str) -> str:
    """Validation problems, one line each, as gen-config and validate print them."""
    return "\n".join(f"{source}: {p.severity}: {p.path}: {p.message} [{p.rule}]" for p in problems)


def __getattr__(name: str) -> Any:
    # generate / validate live in their own modules (they import this one)
    if name in ("generate", "Generated", "edits_text", "launch_command"):
        from . import generation

        return getattr(generation, name)
    if name in ("validate", "Validation", "config_estimate", "estimate_config", "ConfigEstimate"):
        from . import validation

        return getattr(validation, name)
    raise AttributeError(f"module 'qwen_ds.api' has no attribute {name!r}")
