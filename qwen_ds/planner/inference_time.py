"""Inference time model: prefill is compute-bound, decode is memory-bound.

prefill = 2 x active params x prompt tokens / (peak x efficiency x tp), + attention;
decode step = (weights a step reads per GPU + KV/state) / (HBM bandwidth x efficiency) + 2 TP
all-reduces per layer. Weights per GPU follow AutoTP (experts, embedding and head stay whole); of
the routed experts a step reads only those its batch routes to: 1 - (1 - k/E)^batch of them.
ZeRO-3 without offload all-gathers every weight per forward (NVLink / network ring); ZeRO-Inference
with offload streams all weights over PCIe every forward.
Reported through the same StepTime record as training (tokens = generated tokens).
"""

from __future__ import annotations

from ..estimator.inference import gdn_state_bytes_per_sequence, kv_bytes_per_token
from ..estimator.layout import layout
from ..hardware import Cluster
from ..models.counts import count_params
from ..models.spec import ModelSpec
from ..knobs import Plan, Workload
from ..units import bytes_per_element
from .throughput import GB, Network, StepTime, _collective_s

HBM_EFFICIENCY = 0.75
TP_ALLREDUCE_LATENCY_S = 15e-6  # one small NVLink all-reduce


def inference_time(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan, net: Network) -> StepTime:
    gpu = cluster.gpu
    c = count_params(model)
    batch, prompt, new = plan.micro_batch, workload.seq_len, max(workload.new_tokens, 1)
    peak = gpu.peak_tflops("fp8" if plan.precision == "fp8" else "bf16" if gpu.bf16 else "fp16") * 1e12
    active = c.active - c.embedding
    experts = routed_expert_params(model)
    # AutoTP splits the projections; every rank computes its tokens' routed experts whole
    active_experts = experts * model.experts_per_token // model.num_experts if experts else 0
    prefill = (2 * batch * prompt * ((active - active_experts) / plan.tp + active_experts)
               / (peak * net.compute_efficiency))
    b = bytes_per_element(plan.precision)
    touched = 1 - (1 - model.experts_per_token / model.num_experts) ** batch if experts else 0.0
    per_rank = layout(model, cluster, plan).params_per_mp_rank if plan.zero_stage != 3 else c.total
    wbytes = b * (per_rank - experts + experts * touched)
    if plan.zero_stage == 3 and plan.offload_param == "none":
        # every forward gathers all weights from the other ranks, then reads what the step touches
        gather = _collective_s(b * c.total, cluster, cluster.world_size, net)
        prefill += gather
        read = wbytes + batch * (kv_bytes_per_token(model, plan, 1) * (prompt + new / 2)
                                 + gdn_state_bytes_per_sequence(model, plan, 1))
        per_step = gather + read / (gpu.hbm_gbps * GB * HBM_EFFICIENCY)
    elif plan.zero_stage == 3:
        # every forward streams the weights from CPU (or NVMe) over PCIe
        link = gpu.pcie_gbps * net.pcie_efficiency * GB
        if plan.offload_param == "nvme":
            link = min(link, net.nvme_gbps * GB / cluster.gpus_per_node)
        per_step = b * c.total / link
        prefill += per_step
    else:
        ctx = prompt + new / 2
        read = wbytes + batch * (kv_bytes_per_token(model, plan, plan.tp) * ctx
                                 + gdn_state_bytes_per_sequence(model, plan, plan.tp))
        per_step = read / (gpu.hbm_gbps * GB * HBM_EFFICIENCY)
        if plan.tp > 1:
            per_step += 2 * model.num_layers * TP_ALLREDUCE_LATENCY_S
    replicas = cluster.world_size // plan.tp if plan.zero_stage != 3 else cluster.world_size
    total = prefill + new * per_step
    tokens = batch * new * replicas
    flops = 2 * active * batch * (prompt + new) * replicas
    return StepTime(prefill, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, total, tokens, tokens / total, flops,
                    flops / (total * peak * cluster.world_size))


def routed_expert_params(model: ModelSpec) -> int:
    """Parameters of all routed experts (3 x E x Im x h per MoE layer); 0 for dense models."""
    return (3 * model.num_experts * model.moe_intermediate_size * model.hidden_size * model.n_moe_layers
            if model.n_moe_layers else 0)
