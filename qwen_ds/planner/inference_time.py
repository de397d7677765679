"""Inference time model: prefill is compute-bound, decode is memory-bound.

prefill = 2 x active params x prompt tokens / (peak x efficiency x tp), + attention;
decode step = (weights per GPU + KV/state read per step) / (HBM bandwidth x efficiency) + 2 TP
all-reduces per layer; ZeRO-Inference streams all weights over PCIe every forward.
Reported through the same StepTime record as training (tokens = generated tokens).
"""

from __future__ import annotations

from ..estimator.inference import WEIGHT_BYTES, gdn_state_bytes_per_sequence, kv_bytes_per_token
from ..hardware import Cluster
from ..models.counts import count_params
from ..models.spec import ModelSpec
from ..plan import Plan, Workload
from .throughput import GB, Network, StepTime

HBM_EFFICIENCY = 0.75
TP_ALLREDUCE_LATENCY_S = 15e-6  # one small NVLink all-reduce


def inference_time(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan, net: Network) -> StepTime:
    gpu = cluster.gpu
    c = count_params(model)
    batch, prompt, new = plan.micro_batch, workload.seq_len, max(workload.new_tokens, 1)
    peak = gpu.peak_tflops("fp8" if plan.precision == "fp8" else "bf16" if gpu.bf16 else "fp16") * 1e12
    active = c.active - c.embedding
    prefill = 2 * active * batch * prompt / (peak * net.compute_efficiency * plan.tp)
    wbytes = WEIGHT_BYTES[plan.precision] * c.total / plan.tp
    if plan.zero_stage == 3 and plan.offload_param != "none":
        # every forward streams the weights from CPU (or NVMe) over PCIe
        link = gpu.pcie_gbps * net.pcie_efficiency * GB
        if plan.offload_param == "nvme":
            link = min(link, net.nvme_gbps * GB / cluster.gpus_per_node)
        per_step = WEIGHT_BYTES[plan.precision] * c.total / link
        prefill += per_step
    else:
        ctx = prompt + new / 2
        read = wbytes + batch * (kv_bytes_per_token(model, plan, plan.tp) * ctx + gdn_state_bytes_per_sequence(model, plan, plan.tp))
        per_step = read / (gpu.hbm_gbps * GB * HBM_EFFICIENCY)
        if plan.tp > 1:
            per_step += 2 * model.num_layers * TP_ALLREDUCE_LATENCY_S
    replicas = cluster.world_size // plan.tp if plan.zero_stage != 3 else cluster.world_size
    total = prefill + new * per_step
    tokens = batch * new * replicas
    flops = 2 * active * batch * (prompt + new) * replicas
    return StepTime(prefill, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, total, tokens, tokens / total, flops,
                    flops / (total * peak * cluster.world_size))
