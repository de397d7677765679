"""Step-time model: every part visible, so a reader can see why one plan beats another.

step = compute + exposed communication + offload traffic + CPU optimizer, stretched by the
pipeline bubble. Bandwidths and efficiencies are explicit inputs (``Network``); the catalog gives
the GPU peak and link figures. How good the ranking is gets measured on GPUs (issue #7).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..builtin import builtin_compiles
from ..calibration import constant
from ..errors import finite_number
from ..hardware import Cluster
from ..models.counts import count_params, model_flops_per_token
from ..models.spec import ModelSpec
from ..knobs import Plan, Workload
from ..sharding import fp8_matmul_params, gathered_tensors
from ..units import compute_bytes

GB = 1e9


#: the seed's target for the idle share of a pipeline (1F1B) step
BUBBLE_MAX = 0.2


def bubble_fraction(pp: int, micro_batches: int) -> float:
    """Idle share of a 1F1B / GPipe schedule of m micro-batches over p stages: (p - 1) / (m + p - 1)."""
    return (pp - 1) / (micro_batches + pp - 1)


def pipeline_grad_accum(pp: int) -> int:
    """The smallest power-of-two number of micro-batches a step that keeps the bubble under BUBBLE_MAX
    (1 without pipeline stages): 8 for pp 2, 16 for pp 4, 32 for pp 8."""
    m = 1
    while pp > 1 and bubble_fraction(pp, m) >= BUBBLE_MAX:
        m *= 2
    return m


@dataclass(frozen=True)
class Network:
    """Assumed rates. Defaults: NVLink at 70 % of the catalog's one-direction figure, one 200 Gb/s
    InfiniBand NIC per GPU between nodes (DGX A100 layout; DGX H100 has 400 Gb/s per GPU), PCIe at
    70 % of the catalog host link, 25 GB/s of CPU-Adam memory traffic per node (DeepSpeedCPUAdam,
    AVX-512), 3 GB/s NVMe per node."""

    inter_node_gbps: float | None = None  # Gbit/s per node; None = 200 x GPUs per node
    nvlink_efficiency: float = 0.7
    pcie_efficiency: float = 0.7
    compute_efficiency: float = 0.55  # achieved / peak tensor TFLOP/s for large GEMMs
    # GEMMs of few tokens run below that: efficiency x t / (t + this), t = tokens per GPU per micro-step
    # (uncalibrated; #7 fits it from measured steps)
    half_efficiency_tokens: int = 512
    overlap: float = 0.8  # share of overlappable communication hidden behind compute
    cpu_adam_gbps: float = 25.0  # GB/s of optimizer-state traffic per node
    nvme_gbps: float = 3.0  # GB/s per node

    def __post_init__(self) -> None:
        """The rates the step-time model divides by: 0 or NaN would crash it or rank plans by NaN,
        whichever command builds it (gen-config with every knob pinned never searches)."""
        finite_number("--compute-efficiency", self.compute_efficiency, high=1.0)  # achieved / peak
        if self.inter_node_gbps is not None:
            finite_number("--inter-node-gbps", self.inter_node_gbps)


@dataclass(frozen=True)
class StepTime:
    compute_s: float
    recompute_s: float
    comm_s: float
    exposed_comm_s: float
    offload_s: float
    cpu_optimizer_s: float
    bubble_factor: float
    step_s: float
    tokens_per_step: int
    tokens_per_s: float
    model_flops_per_step: float
    mfu: float
    gpu_optimizer_s: float = 0.0  # the optimizer step on the GPU (not offloaded): HBM traffic per updated param
    zero3_fetch_s: float = 0.0  # host time of ZeRO-3's parameter hooks the GPU waits for (zero3_host_s_per_tensor)

    def parts(self) -> dict[str, float]:
        return {
            "compute_s": self.compute_s, "recompute_s": self.recompute_s, "comm_s": self.comm_s,
            "exposed_comm_s": self.exposed_comm_s, "offload_s": self.offload_s, "cpu_optimizer_s": self.cpu_optimizer_s,
            "gpu_optimizer_s": self.gpu_optimizer_s, "zero3_fetch_s": self.zero3_fetch_s,
            "bubble_factor": self.bubble_factor, "step_s": self.step_s,
        }


def inter_node_bytes_per_s(cluster: Cluster, net: Network) -> float:
    gbps = net.inter_node_gbps if net.inter_node_gbps is not None else 200.0 * cluster.gpus_per_node
    return gbps / 8 * GB


def _collective_s(nbytes: float, cluster: Cluster, group: int, net: Network) -> float:
    """Ring all-gather / reduce-scatter of ``nbytes`` (the full tensor) over ``group`` ranks:
    each rank moves (g-1)/g of it; across nodes each node's NIC carries its GPUs' share."""
    if group <= 1 or nbytes <= 0:
        return 0.0
    gpu = cluster.gpu
    frac = (group - 1) / group
    nvlink = (gpu.nvlink_gbps / 2 * net.nvlink_efficiency * GB if gpu.nvlink_gbps
              else gpu.pcie_gbps * net.pcie_efficiency * GB)
    t = nbytes * frac / nvlink
    if cluster.nodes > 1 and group > cluster.gpus_per_node:
        gpn = cluster.gpus_per_node
        node_bw = inter_node_bytes_per_s(cluster, net)
        t = max(t, nbytes * gpn * (group - gpn) / group / node_bw)
    return t


def trainable_share(model: ModelSpec, plan: Plan) -> float:
    """Trainable parameters over the model's (LoRA adapters are extra parameters, freeze trains a subset)."""
    from ..models.finetune import plan_trainable

    return plan_trainable(model, plan) / count_params(model).total


def finetune_flops_factor(model: ModelSpec, plan: Plan) -> float:
    """Training FLOPs relative to full training (6 per parameter and token: forward 2, backward 2 for the input
    gradient and 2 for the weight gradient). LoRA / QLoRA: frozen weights skip the weight gradient (4 of 6), the
    adapters add 6 per adapter parameter. Freeze of the last N layers: forward everywhere, backward only through
    N of L layers; of the first N: the input gradient through all, weight gradients for N."""
    if plan.finetune in ("lora", "qlora"):
        return 4 / 6 + trainable_share(model, plan)
    n, layers = plan.freeze_layers, model.num_layers
    if n > 0:
        return (2 + 4 * n / layers) / 6
    return (4 + 2 * -n / layers) / 6


def step_time(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan,
              net: Network | None = None) -> StepTime:
    net = net or Network()
    gpu = cluster.gpu
    world = cluster.world_size
    dp = plan.dp(world)
    seq = workload.seq_len
    tokens_per_gpu_micro = plan.micro_batch * seq
    tokens_per_step = tokens_per_gpu_micro * plan.grad_accum * dp
    peak = gpu.peak_tflops(plan.precision) * 1e12
    flops_tok = model_flops_per_token(model, seq)
    model_flops = flops_tok * tokens_per_step
    # each GPU does 1/(tp*pp) of its data-parallel replica's work
    if plan.finetune != "full":  # frozen weights skip their weight-gradient GEMMs (qwen_ds/models/finetune.py)
        flops_tok *= finetune_flops_factor(model, plan)
        model_flops = flops_tok * tokens_per_step
    per_gpu_flops = flops_tok * tokens_per_gpu_micro * plan.grad_accum / (plan.tp * plan.pp)
    eff = net.compute_efficiency * tokens_per_gpu_micro / (tokens_per_gpu_micro + net.half_efficiency_tokens)
    if plan.precision == "fp8":  # only the Linear layers torchao converts get faster, by the measured factor
        # (float8 casts and scalings included), not the FP8 / bf16 peak ratio (calibration.json fp8_gemm_speedup)
        f = min(1.0, 6 * fp8_matmul_params(model) / flops_tok)
        bf16_peak = gpu.peak_tflops("bf16") * 1e12
        compute = per_gpu_flops * (f / (bf16_peak * constant("fp8_gemm_speedup")) + (1 - f) / bf16_peak) / eff
    else:
        compute = per_gpu_flops / (peak * eff)
    if not builtin_compiles(model.family, plan):  # the built-in trainer runs these layers eager
        compute *= constant("eager_slowdown")
    recompute = compute / 3 if plan.checkpointing else 0.0  # one extra forward = 1/3 of fwd+bwd
    c = count_params(model)
    b = compute_bytes(plan.precision)
    passes = 3 if plan.checkpointing else 2  # times a micro-step runs each layer: forward, recompute, backward
    if plan.finetune == "qlora":  # bitsandbytes dequantizes each 4-bit Linear weight to 16 bits before every use:
        # it reads NF4 + constants and writes b bytes per weight, at HBM speed (an upper bound on its rate: unmeasured)
        from ..estimator.model_states import NF4_BYTES
        from ..models.finetune import linear_weights

        per_rank = linear_weights(model) / (plan.tp * plan.pp)
        compute += plan.grad_accum * passes * per_rank * (NF4_BYTES + b) / (gpu.hbm_gbps * GB)
    shard = c.total / (plan.tp * plan.pp)  # params of one model-parallel rank's replica
    # what has gradients and optimizer states: all of it, or LoRA's adapters / freeze's layers
    trained = shard if plan.finetune == "full" else shard * trainable_share(model, plan)
    ga = plan.grad_accum
    # ZeRO traffic per optimizer step (bytes of the full tensor per collective)
    if plan.zero_stage == 3:  # params all-gathered in forward and backward (frozen ones too), grads reduce-scattered
        comm = ga * (2 * _collective_s(b * shard, cluster, dp, net) + _collective_s(b * trained, cluster, dp, net))
        if plan.hpz_partition_size > 1:  # backward all-gather stays in the node
            comm -= ga * _collective_s(b * shard, cluster, dp, net)
            comm += ga * _collective_s(b * shard, Cluster(gpu, 1, plan.hpz_partition_size), plan.hpz_partition_size,
                                       net)
        if plan.quantized_weights:
            comm *= 0.75
    elif plan.zero_stage == 2:
        comm = ga * _collective_s(b * trained, cluster, dp, net) + _collective_s(b * trained, cluster, dp, net)
    elif plan.zero_stage == 1:
        comm = 2 * _collective_s(b * trained, cluster, dp, net)
    else:
        comm = 2 * _collective_s(b * trained, cluster, dp, net)  # all-reduce = reduce-scatter + all-gather
    if plan.tp > 1:  # AutoTP: 2 all-reduces of activations per layer in fwd, 2 in bwd
        act = b * plan.micro_batch * seq * model.hidden_size
        comm += ga * 4 * model.num_layers / plan.pp * 2 * _collective_s(act, Cluster(gpu, 1, plan.tp), plan.tp, net)
    if plan.pp > 1:  # point-to-point activations between stages, fwd and bwd, per micro-batch
        comm += ga * 2 * b * plan.micro_batch * seq * model.hidden_size / inter_node_bytes_per_s(cluster, net)
    overlappable = comm if plan.overlap_comm or plan.zero_stage == 3 else 0.0
    hidden = min(overlappable * net.overlap, compute + recompute)
    exposed = comm - hidden
    # offload: PCIe traffic and CPU Adam
    part, opt_part = shard / dp, trained / dp
    pcie = gpu.pcie_gbps * net.pcie_efficiency * GB
    offload = cpu_opt = 0.0
    if plan.offload_optimizer != "none":
        offload += (b * opt_part + b * opt_part) / pcie  # grads down, updated params up
        cpu_opt = 16 * opt_part * cluster.gpus_per_node / (net.cpu_adam_gbps * GB)
        if plan.offload_optimizer == "nvme":
            cpu_opt += 2 * 12 * opt_part * cluster.gpus_per_node / (net.nvme_gbps * GB)
    if plan.offload_param != "none":  # each rank fetches its partition from host memory in every pass, at the rate
        # measured for DeepSpeed's fetches (calibration.json param_offload_gbps), far under the PCIe link
        offload += ga * passes * b * part / (constant("param_offload_gbps") * GB)
        if plan.offload_param == "nvme":
            offload += ga * 2 * b * part * cluster.gpus_per_node / (net.nvme_gbps * GB)
    # the optimizer step on the GPU: its HBM traffic per parameter it updates (calibration.json)
    gpu_opt = (constant("gpu_optimizer_bytes_per_param") * opt_part / (gpu.hbm_gbps * GB)
               if plan.offload_optimizer == "none" else 0.0)
    # ZeRO-3's hooks gather, release and reduce each large parameter on the host, in Python, one at a time; the GPU
    # waits for them when a micro-step's kernels take less time than the hooks (small micro-batches)
    fetch = 0.0
    if plan.zero_stage == 3:
        threshold = plan.buckets(model.hidden_size)["param_persistence_threshold"]
        host = gathered_tensors(model, threshold) * constant("zero3_host_s_per_tensor") / plan.pp
        fetch = ga * max(0.0, host - (compute + recompute + exposed) / ga)
    m = ga
    bubble = 1 / (1 - bubble_fraction(plan.pp, m))  # (m + p - 1) / m
    step = (compute + recompute + exposed) * bubble + offload + cpu_opt + gpu_opt + fetch
    return StepTime(compute, recompute, comm, exposed, offload, cpu_opt, bubble, step, tokens_per_step,
                    tokens_per_step / step, model_flops, model_flops / (step * peak * world), gpu_opt, fetch)
