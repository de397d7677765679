"""The plan vocabulary shared by estimate / plan / gen-config, and how flags become core objects."""

from __future__ import annotations

from typing import Any, Callable

import click

from ..errors import InputError
from ..hardware import GPU, Cluster, get_gpu
from ..models import ModelSpec, load_model
from ..plan import KERNELS, LOSS_PATHS, OFFLOAD, Plan, Workload


def _opts(*decorators: Callable) -> Callable:
    def wrap(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return wrap


cluster_options = _opts(
    click.option("--model", "-m", required=True, help="Preset name (qwen-ds models), config.json path, HF model directory, or HF id in the local cache."),
    click.option("--gpu", "-g", required=True, help="GPU type from the catalog (qwen-ds gpus), e.g. A100-80GB, H100-SXM, V100-32GB."),
    click.option("--nodes", type=int, default=None, help="Number of nodes [1, or from --hostfile]."),
    click.option("--gpus-per-node", type=int, default=None, help="GPUs per node [8, or from --hostfile]."),
    click.option("--hostfile", type=click.Path(dir_okay=False), default=None,
                 help="DeepSpeed hostfile ('host slots=N' lines): gives --nodes and --gpus-per-node."),
)


def cluster_shape(kw: dict[str, Any]) -> tuple[int, int]:
    """(nodes, gpus_per_node) from --hostfile and/or the explicit flags; they must agree."""
    nodes, gpn = kw.get("nodes"), kw.get("gpus_per_node")
    if kw.get("hostfile"):
        from ..hostfile import read_hostfile

        hf = read_hostfile(kw["hostfile"])
        for flag, given, actual in (("--nodes", nodes, hf.nodes), ("--gpus-per-node", gpn, hf.gpus_per_node)):
            if given is not None and given != actual:
                raise InputError(f"{flag} {given} disagrees with --hostfile {kw['hostfile']} ({actual}); drop the flag or fix the hostfile")
        return hf.nodes, hf.gpus_per_node
    return (1 if nodes is None else nodes), (8 if gpn is None else gpn)

plan_options = _opts(
    click.option("--mode", type=click.Choice(["train", "infer"]), default="train", show_default=True),
    click.option("--zero", "zero_stage", type=click.IntRange(0, 3), default=None, help="ZeRO stage 0-3 [train: 3, infer: 0]."),
    click.option("--offload-optimizer", type=click.Choice(OFFLOAD), default="none", show_default=True),
    click.option("--offload-param", type=click.Choice(OFFLOAD), default="none", show_default=True),
    click.option("--precision", type=click.Choice(["bf16", "fp16", "fp32", "fp8", "int8"]), default=None,
                 help="Compute precision [bf16 where the GPU has it, else fp16]; int8 for inference weights only."),
    click.option("--micro-batch", type=int, default=1, show_default=True, help="Sequences per GPU per step (inference: batch)."),
    click.option("--grad-accum", type=int, default=1, show_default=True, help="Gradient accumulation steps (pipeline micro-batches in flight)."),
    click.option("--seq-len", type=int, default=4096, show_default=True, help="Tokens per sequence (inference: prompt length)."),
    click.option("--new-tokens", type=int, default=0, show_default=True, help="Inference: tokens generated per sequence."),
    click.option("--checkpointing/--no-checkpointing", default=True, show_default=True, help="Per-layer activation checkpointing."),
    click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel degree."),
    click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel degree (ZeRO 0/1 only)."),
    click.option("--loss", type=click.Choice(LOSS_PATHS), default="hf", show_default=True,
                 help="hf: plain forward with labels (full fp32 logits); chunked: the built-in runtime's chunked cross-entropy."),
    click.option("--kernels", type=click.Choice(KERNELS), default="hf", show_default=True,
                 help="hf: transformers defaults (sdpa, torch GDN fallback); fused: flash-attn / FLA / fused norms."),
)


def check_precision(gpu: GPU, precision: str, mode: str) -> None:
    """bf16 needs compute capability >= 8.0, fp8 >= 8.9; refuse with the alternatives."""
    if precision == "bf16" and not gpu.bf16:
        raise InputError(f"--precision bf16: {gpu.name} (compute capability {gpu.compute_capability}) has no bf16; use --precision fp16 (with loss scaling) or fp32")
    if precision == "fp8" and not gpu.fp8:
        alt = "bf16" if gpu.bf16 else "fp16"
        raise InputError(f"--precision fp8: {gpu.name} (compute capability {gpu.compute_capability}) has no FP8 tensor cores (needs >= 8.9: L40S, H100, H200, B200); use --precision {alt}")
    if precision == "int8" and mode == "train":
        raise InputError("--precision int8 is for --mode infer (weights); for training use bf16, fp16, fp32 or fp8")


def build_inputs(kw: dict[str, Any]) -> tuple[ModelSpec, Cluster, Workload, Plan]:
    """Flags -> (ModelSpec, Cluster, Workload, Plan); every problem is an InputError naming the flag."""
    for flag, key in (("--seq-len", "seq_len"), ("--micro-batch", "micro_batch"), ("--grad-accum", "grad_accum"),
                      ("--tp", "tp"), ("--pp", "pp"), ("--nodes", "nodes"), ("--gpus-per-node", "gpus_per_node")):
        if kw[key] is not None and kw[key] < 1:
            raise InputError(f"{flag} {kw[key]}: must be a positive integer")
    nodes, gpn = cluster_shape(kw)
    model = load_model(kw["model"])
    gpu = get_gpu(kw["gpu"])
    cluster = Cluster(gpu, nodes, gpn)
    mode = kw["mode"]
    precision = kw["precision"] or ("bf16" if gpu.bf16 else "fp16")
    check_precision(gpu, precision, mode)
    zero = kw["zero_stage"] if kw["zero_stage"] is not None else (3 if mode == "train" else 0)
    workload = Workload(mode=mode, seq_len=kw["seq_len"], new_tokens=kw["new_tokens"])
    if mode == "infer" and zero == 3 and kw["tp"] > 1:
        raise InputError(f"--tp {kw['tp']} with --mode infer --zero 3: ZeRO-Inference has no tensor parallelism; "
                         "use --zero 0 --tp N (DeepSpeed-Inference) or --tp 1")
    plan = Plan(
        zero_stage=zero, offload_optimizer=kw["offload_optimizer"], offload_param=kw["offload_param"],
        tp=kw["tp"], pp=kw["pp"], micro_batch=kw["micro_batch"], grad_accum=kw["grad_accum"],
        checkpointing=kw["checkpointing"], precision=precision, loss=kw["loss"], kernels=kw["kernels"],
    )
    return model, cluster, workload, plan
