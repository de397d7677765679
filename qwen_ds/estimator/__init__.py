"""estimate(model, cluster, workload, plan) -> MemoryBreakdown: the sum of named terms."""

from __future__ import annotations

import dataclasses

from ..calibration import constant
from ..hardware import Cluster
from ..models.spec import ModelSpec
from ..knobs import Plan, Workload
from ..units import GIB
from . import activations, buffers, inference, model_states
from .breakdown import MemoryBreakdown, Term
from .layout import Layout, layout

#: the allocator slack constant (data/calibration.json) of each --allocator
FRAGMENTATION = {"expandable": "fragmentation", "default": "fragmentation_default_allocator"}


def fragmentation(plan: Plan) -> float:
    """Reserved / allocated - 1 at peak for the plan's allocator; ZeRO-3 parameter offload has its own (measured
    1.40 and 1.62: parameters streamed from the host come and go in every layer)."""
    if plan.offload_param != "none":
        suffix = "" if plan.allocator == "expandable" else "_default_allocator"
        return constant("fragmentation_param_offload" + suffix)
    return constant(FRAGMENTATION[plan.allocator])

__all__ = ["Layout", "MemoryBreakdown", "Term", "estimate", "layout", "plan_layout", "planned"]


def planned(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan) -> tuple[Layout, MemoryBreakdown]:
    """The layout of the GPU that holds the most, and its estimate. With pipeline stages (training) that is the
    stage whose estimate is largest: the stages differ in parameters (DeepSpeed's partition) and in micro-batches
    in flight (1F1B: p on the first stage, 1 on the last)."""
    lay = layout(model, cluster, plan, training=workload.mode == "train")
    if workload.mode != "train" or lay.pp == 1 or len(lay.stage_params) != lay.pp:
        return lay, estimate(model, cluster, workload, plan, lay)
    # a stage with no more parameters and no more in flight than an earlier one holds less, unless it is the
    # last (the loss): the first stage, the first of the most parameters, and the last can hold the most
    heaviest = lay.stage_params.index(max(lay.stage_params))
    stages = [layout(model, cluster, plan, training=True, stage=s) for s in sorted({0, heaviest, lay.pp - 1})]
    return max(((st, estimate(model, cluster, workload, plan, st)) for st in stages),
               key=lambda pair: pair[1].gpu_total_bytes)


def plan_layout(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan) -> Layout:
    """The layout of ``planned``: the GPU that holds the most."""
    return planned(model, cluster, workload, plan)[0]


def estimate(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan,
             lay: Layout | None = None) -> MemoryBreakdown:
    """``lay``: the layout to estimate (a pipeline stage); without it, the fullest GPU's (``planned``)."""
    if lay is None:
        return planned(model, cluster, workload, plan)[1]
    gpn = cluster.gpus_per_node
    if workload.mode == "infer":
        gpu = inference.inference_terms(model, lay, plan, workload.seq_len, workload.new_tokens, cluster.world_size)
        cpu = inference.cpu_terms(model, plan, cluster.nodes)
        nvme: list[Term] = []
    else:
        gpu = (
            model_states.gpu_terms(lay, plan)
            + activations.activation_terms(model, lay, plan, workload.seq_len)
            + activations.loss_terms(model, lay, plan, workload.seq_len)
            + buffers.gpu_terms(model, lay, plan)
        )
        cpu = model_states.cpu_terms(lay, plan, gpn)
        nvme = model_states.nvme_terms(lay, plan, gpn)
    gpu += buffers.cuda_context(cluster.world_size)
    cpu.append(model_states.load_peak(model, plan, gpn, cluster.world_size))
    notes = []
    if not model.closed_form:
        notes.append(f"{model.family}: parameters counted on the meta device; activations not modelled for this family")
    b = MemoryBreakdown(
        gpu_terms=tuple(t for t in gpu if t.bytes or t.phase == "persistent"),
        cpu_terms=tuple(cpu),
        nvme_terms=tuple(nvme),
        fragmentation=fragmentation(plan),
        gpu_memory_bytes=cluster.gpu.memory_bytes,
        notes=tuple(notes),
    )
    if b.cpu_peak_at_load and plan.zero_stage != 3:
        note = (f"CPU RAM peaks at load: {gpn} ranks each build the whole model in host RAM "
                f"({b.cpu_load_peak_bytes_per_node / GIB:.1f} GiB per node); use HfDeepSpeedConfig / zero.Init, "
                "or low_cpu_mem_usage")
        b = dataclasses.replace(b, notes=b.notes + (note,))
    return b
