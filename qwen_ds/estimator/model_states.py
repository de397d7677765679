"""Model states of mixed-precision AdamW training under ZeRO 0-3 and offload.

M = parameters one model-parallel rank owns (Layout.params_per_mp_rank), D = data-parallel degree.
Bytes per parameter (ZeRO paper, arXiv 1910.02054 §3; DeepSpeed `estimate_zero{2,3}_model_states_mem_needs`):
16-bit params 2, 16-bit grads 2, fp32 master 4, Adam m and v 4+4; fp32 training: params 4, grads 4,
Adam 8, and under ZeRO >= 1 still a cloned fp32 master partition 4 (measured on CPU). FP8 compute keeps
bf16 model states (TE / torchao keep bf16 masters).
Partitioning: ZeRO-1 optimizer states + master, ZeRO-2 also grads, ZeRO-3 also params.
Read from DeepSpeed 0.19.8: stage 0 bf16 (grad_accum_dtype = model dtype) -> FP16_Optimizer with an
fp32 flat master copy; stage 1/2 -> stage_1_and_2.py (fp32 partition, fp32 grad partition made in
step()); stage 3 -> stage3.py (grad partitions in the accumulation dtype, on CPU with
offload_optimizer; fp32 grads built per sub-group of ``sub_group_size`` in step()).
"""

from __future__ import annotations

from ..knobs import Plan
from ..models.counts import count_params
from ..models.spec import ModelSpec
from ..units import compute_bytes
from .breakdown import Term
from .layout import Layout


def _div(n: int, d: int) -> int:
    return -(-n // d)


#: bytes per parameter of a QLoRA base weight: NF4 (0.5 B), an 8-bit absmax per 64-weight block and, with double
#: quantization, one fp32 constant per 256 of those blocks (bitsandbytes; QLoRA, arXiv 2305.14314 §3)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)


def params_16bit(lay: Layout, plan: Plan) -> Term:
    """Model parameters on GPU: b·M, /D under ZeRO-3, 0 with offload_param (they live on CPU/NVMe). LoRA: M holds
    the adapters too; QLoRA: its base Linear weights at NF4_BYTES each. ZeRO-3 partitions frozen params as well."""
    b, m, q = compute_bytes(plan.precision), lay.params_per_mp_rank, lay.quantized
    if plan.zero_stage == 3 and plan.offload_param != "none":
        return Term("params", 0, "persistent", f"offloaded to {plan.offload_param}")
    total, formula = b * (m - q) + round(NF4_BYTES * q), (
        f"{b} B x {m - q:,} + NF4 {NF4_BYTES:.4f} B x {q:,}" if q else f"{b} B x {m:,}")
    if plan.zero_stage == 3:
        return Term("params", _div(total, lay.dp), "persistent", f"{formula} / dp {lay.dp}")
    return Term("params", total, "persistent", formula)


def hpz_secondary_params(lay: Layout, plan: Plan) -> Term:
    """ZeRO++ hpZ: a secondary copy of the 16-bit params partitioned over hpz ranks (one node):
    b·M/hpz, so backward all-gathers stay inside the node (arXiv 2306.10209 §3.2)."""
    if plan.zero_stage != 3 or plan.hpz_partition_size <= 1:
        return Term("hpz_secondary_params", 0, "persistent", "no hpZ")
    b, m, z = compute_bytes(plan.precision), lay.params_per_mp_rank, plan.hpz_partition_size
    return Term("hpz_secondary_params", _div(b * m, z), "persistent", f"{b} B x {m:,} / hpz {z}")


def gradients(lay: Layout, plan: Plan) -> Term:
    """Gradients in the model dtype: full b·M for ZeRO 0/1, b·M/D for ZeRO 2/3; none on GPU when the
    optimizer is offloaded (stage 2/3 copy each reduced partition straight to CPU)."""
    b, m = compute_bytes(plan.precision), lay.trained  # frozen parameters get none
    if plan.offload_optimizer != "none" and plan.zero_stage >= 2:
        return Term("gradients", 0, "persistent", "reduced partitions go to CPU (offload_optimizer)")
    if plan.zero_stage >= 2:
        return Term("gradients", _div(b * m, lay.dp), "persistent", f"{b} B x {m:,} / dp {lay.dp}")
    return Term("gradients", b * m, "persistent", f"{b} B x {m:,}")


def _opt_partition(lay: Layout, plan: Plan) -> int:
    """The optimizer's share of the rank's trainable parameters (DeepSpeed's optimizer sees only those)."""
    return _div(lay.trained, lay.dp) if plan.zero_stage >= 1 else lay.trained


def master_weights(lay: Layout, plan: Plan) -> Term:
    """fp32 master copy 4·M (/D with ZeRO >= 1); on CPU when offloaded. fp32 training keeps one too
    under ZeRO >= 1: DeepSpeed's ZeRO optimizers clone the fp32 partition (stage3.py
    fp32_partitioned_groups_flat, stage_1_and_2.py single_partition_of_fp32_groups), measured not to
    alias the params on CPU; only ZeRO-0 fp32 steps the params themselves."""
    if plan.precision == "fp32" and plan.zero_stage == 0:
        return Term("master_weights_fp32", 0, "persistent", "fp32 ZeRO-0: the optimizer steps the params themselves")
    if plan.offload_optimizer != "none":
        return Term("master_weights_fp32", 0, "persistent", f"on {plan.offload_optimizer} (offload_optimizer)")
    n = _opt_partition(lay, plan)
    return Term("master_weights_fp32", 4 * n, "persistent", f"4 B x {n:,}")


def optimizer_states(lay: Layout, plan: Plan) -> Term:
    """AdamW first and second moments in fp32: 8·M (/D with ZeRO >= 1); on CPU when offloaded."""
    if plan.offload_optimizer != "none":
        return Term("optimizer_states", 0, "persistent", f"on {plan.offload_optimizer} (offload_optimizer)")
    n = _opt_partition(lay, plan)
    return Term("optimizer_states", 8 * n, "persistent", f"8 B x {n:,} (Adam m, v)")


def step_fp32_grads(lay: Layout, plan: Plan) -> Term:
    """fp32 gradients made for the optimizer step: 4·M/D (ZeRO 1/2), for ZeRO-3 one sub-group at a time
    4·min(sub_group_size, M/D), and 8·M for ZeRO-0: DeepSpeed's bf16 optimizer holds an fp32 gradient per
    parameter and the step a second fp32 buffer as large (measured on an H200: Qwen3-4B ZeRO-0 plans peak at
    24.0 B per parameter in the step, whatever the micro-batch: 96.61 GB in five runs,
    benchmarks/results/planner_vs_stock_h200_2026-12-02.md). None on GPU with optimizer offload or fp32."""
    if plan.precision == "fp32" or plan.offload_optimizer != "none":
        return Term("step_fp32_grads", 0, "step", "none on GPU")
    n = _opt_partition(lay, plan)
    if plan.zero_stage == 3:
        n = min(n, plan.sub_group_size)
    per = 8 if plan.zero_stage == 0 else 4
    why = " (fp32 grads + the step's copy)" if per == 8 else ""
    return Term("step_fp32_grads", per * n, "step", f"{per} B x {n:,}{why}")


def gpu_terms(lay: Layout, plan: Plan) -> list[Term]:
    return [params_16bit(lay, plan), hpz_secondary_params(lay, plan), gradients(lay, plan), master_weights(lay, plan),
            optimizer_states(lay, plan), step_fp32_grads(lay, plan)]


def cpu_terms(lay: Layout, plan: Plan, gpus_per_node: int) -> list[Term]:
    """CPU RAM per node for offload: each of the node's ranks holds its partition.
    offload_optimizer=cpu: fp32 master 4 + Adam 8 + fp32 grads 4 = 16 B per partition element
    (DeepSpeed CPU-Adam; grads land in a pinned fp32 buffer). offload_param=cpu: b B per element."""
    out = []
    part = _opt_partition(lay, plan)
    if plan.offload_optimizer == "cpu":
        out.append(Term("cpu_optimizer_offload", 16 * part * gpus_per_node, "persistent",
                        f"16 B x {part:,} x {gpus_per_node} ranks"))
    if plan.offload_param == "cpu":
        b = compute_bytes(plan.precision)
        n = _div(lay.params_per_mp_rank, lay.dp)
        out.append(Term("cpu_param_offload", b * n * gpus_per_node, "persistent",
                        f"{b} B x {n:,} x {gpus_per_node} ranks"))
    if plan.offload_param == "nvme":
        # offload_param buffer_count 5 x buffer_size 1e8 elements, pinned, per rank
        out.append(Term("cpu_nvme_param_buffers", 5 * 100_000_000 * 2 * gpus_per_node, "persistent",
                        f"5 x 1e8 x 2 B x {gpus_per_node} ranks"))
    if plan.offload_optimizer == "nvme":
        # offload_optimizer buffer_count 4 swap buffers of one sub-group (fp32) per rank
        sub = min(part, plan.sub_group_size)
        out.append(Term("cpu_nvme_optimizer_buffers", 4 * sub * 4 * gpus_per_node, "persistent",
                        f"4 x {sub:,} x 4 B x {gpus_per_node} ranks"))
    return out


def load_peak(model: ModelSpec, plan: Plan, gpus_per_node: int, world: int) -> Term:
    """Host RAM per node while the model is built, before deepspeed.initialize (phase ``load``).

    Weights load in the compute dtype (qwen_ds/runtime/common.py build_model passes the ds_config's
    bf16 / fp16 / fp32 as ``dtype``; int8 / fp8 checkpoints are 16-bit and quantized after loading),
    b = compute_bytes(precision), P = all parameters (count_params(model).total).
    - ZeRO 0, 1, 2 (and inference with zero_stage 0, AutoTP): without zero.Init every rank builds
      the whole model on the CPU (from_config / from_pretrained, then the engine moves or AutoTP
      splits it): ranks per node x b x P. transformers loads with low_cpu_mem_usage semantics (meta
      init, one copy); an older loader without it holds two copies while it copies the state dict.
      DeepSpeed's own estimator has this term (estimate_zero2_model_states_mem_needs: 4n·P with
      zero_init=0); host-RAM OOMs at load: DeepSpeed#5290, LLaMA-Factory#6755.
    - ZeRO-3: build_model keeps an HfDeepSpeedConfig alive, so transformers builds the model inside
      zero.Init and each parameter is partitioned as it is created: a rank holds one partition,
      ranks per node x b x P / world. Not counted: the one checkpoint shard from_pretrained reads at
      a time on each rank, and the module being initialised before it is partitioned.
    Gone by the first step, so the node total is max(this, steady CPU terms), not the sum."""
    b, p = compute_bytes(plan.precision), count_params(model).total
    dtype = "16-bit" if b == 2 else "fp32"
    if plan.zero_stage == 3:
        n = _div(b * p, world)
        return Term("load_peak", n * gpus_per_node, "load",
                    f"{gpus_per_node} ranks x {dtype} weights {b} B x {p:,} / world {world} (zero.Init partitions)")
    return Term("load_peak", b * p * gpus_per_node, "load",
                f"{gpus_per_node} ranks x {dtype} weights {b} B x {p:,} (whole model on every rank, no zero.Init)")


def nvme_terms(lay: Layout, plan: Plan, gpus_per_node: int) -> list[Term]:
    """NVMe space per node: the same bytes as the CPU offload they replace."""
    out = []
    part = _opt_partition(lay, plan)
    if plan.offload_optimizer == "nvme":
        out.append(Term("nvme_optimizer", 16 * part * gpus_per_node, "persistent",
                        f"16 B x {part:,} x {gpus_per_node} ranks"))
    if plan.offload_param == "nvme":
        b = compute_bytes(plan.precision)
        n = _div(lay.params_per_mp_rank, lay.dp)
        out.append(Term("nvme_params", b * n * gpus_per_node, "persistent", f"{b} B x {n:,} x {gpus_per_node} ranks"))
    return out
