"""DeepSpeed communication buffers, ZeRO-3 gathered parameters, and memory outside the allocator.

Sources: DeepSpeed 0.19.8 `runtime/zero/stage_1_and_2.py` (ipg buffers of reduce_bucket_size,
two with overlap_comm), `runtime/zero/stage3.py` (one ipg bucket per grad dtype of
reduce_bucket_size; params fetched module by module plus a prefetch window of
stage3_prefetch_bucket_size; params under stage3_param_persistence_threshold stay whole), and the
estimator's 4·L "largest layer" term (gathered 16-bit params + their full gradients before
reduce-scatter). CUDA context / NCCL / fragmentation constants: data/calibration.json.
"""

from __future__ import annotations

from ..calibration import constant
from ..models.spec import ModelSpec
from ..knobs import Plan
from ..sharding import autotp_shards, largest_gathered, largest_trained_gathered, persistent_split
from ..units import compute_bytes
from .breakdown import Term
from .layout import Layout


def reduce_buckets(model: ModelSpec, lay: Layout, plan: Plan) -> Term:
    """Gradient reduce buckets: b·reduce_bucket_size, doubled by overlap_comm for ZeRO 1/2.
    ZeRO-0 (plain DP) all-reduces in DeepSpeed's own allreduce buckets: modelled as one bucket."""
    if lay.dp == 1 and plan.zero_stage < 3:
        return Term("reduce_buckets", 0, "fwd_bwd", "dp 1: no gradient reduction")
    b = compute_bytes(plan.precision)
    rbs = plan.buckets(model.hidden_size)["reduce_bucket_size"]
    n = 2 if (plan.overlap_comm and plan.zero_stage in (1, 2)) else 1
    return Term("reduce_buckets", n * b * rbs, "fwd_bwd", f"{n} x {b} B x reduce_bucket_size {rbs:,}")


def largest_gathered_per_rank(model: ModelSpec, tp: int) -> int:
    """The largest unit ZeRO-3 gathers, on one TP rank: split by AutoTP only if it is a projection
    (an MoE block, the embedding or the head stays whole)."""
    n, name = largest_gathered(model)
    return -(-n // tp) if autotp_shards(name) else n


def zero3_gathered_params(model: ModelSpec, lay: Layout, plan: Plan) -> Term:
    """ZeRO-3 live 16-bit params: the largest gathered unit L (one module, or one MoE block
    registered as a leaf; /tp where AutoTP splits it) plus the prefetch window: b·(L + prefetch_bucket_size)."""
    if plan.zero_stage != 3:
        return Term("zero3_gathered_params", 0, "fwd_bwd", "not ZeRO-3")
    b = compute_bytes(plan.precision)
    largest = largest_gathered_per_rank(model, lay.tp)
    pf = plan.buckets(model.hidden_size)["prefetch_bucket_size"]
    return Term("zero3_gathered_params", b * (largest + pf), "fwd_bwd",
                f"{b} B x ({largest:,} largest + {pf:,} prefetch)")


def zero3_gathered_grads(model: ModelSpec, lay: Layout, plan: Plan) -> Term:
    """ZeRO-3 backward: full gradients of the gathered unit before reduce-scatter: b·L (/tp where split); under
    LoRA / freeze the largest unit that trains (largest_trained_gathered)."""
    if plan.zero_stage != 3:
        return Term("zero3_gathered_grads", 0, "fwd_bwd", "not ZeRO-3")
    b = compute_bytes(plan.precision)
    full = plan.finetune == "full"
    largest = largest_gathered_per_rank(model, lay.tp) if full else largest_trained_gathered(model, plan)
    return Term("zero3_gathered_grads", b * largest, "fwd_bwd", f"{b} B x {largest:,}")


def zero3_persistent_params(model: ModelSpec, lay: Layout, plan: Plan) -> Term:
    """Params of at most stage3_param_persistence_threshold elements stay unpartitioned on every rank:
    b·(sum of small tensors), with full-size gradients b·(the trained ones among them: all in full training; LoRA's
    small adapters, which peft adds next to the frozen small base tensors; freeze's trained layers)."""
    if plan.zero_stage != 3:
        return Term("zero3_persistent_params", 0, "persistent", "not ZeRO-3")
    b = compute_bytes(plan.precision)
    thr = plan.buckets(model.hidden_size)["param_persistence_threshold"]
    frozen, trained = persistent_split(model, plan, thr) if model.closed_form else (0, 0)
    if not frozen:
        return Term("zero3_persistent_params", 2 * b * trained, "persistent",
                    f"2 x {b} B x {trained:,} params <= {thr:,} elements")
    return Term("zero3_persistent_params", b * (frozen + 2 * trained), "persistent",
                f"{b} B x ({frozen:,} frozen + 2 x {trained:,} trained) params <= {thr:,} elements")


def cuda_context(world: int) -> list[Term]:
    """Outside PyTorch's allocator: CUDA context + library handles, and NCCL buffers when world > 1."""
    out = [Term("cuda_context", int(constant("cuda_context_bytes")), "outside", "calibration.json cuda_context_bytes")]
    if world > 1:
        out.append(Term("nccl_buffers", int(constant("nccl_bytes")), "outside", "calibration.json nccl_bytes"))
    return out


def gpu_terms(model: ModelSpec, lay: Layout, plan: Plan) -> list[Term]:
    return [
        reduce_buckets(model, lay, plan),
        zero3_gathered_params(model, lay, plan),
        zero3_gathered_grads(model, lay, plan),
        zero3_persistent_params(model, lay, plan),
    ]
