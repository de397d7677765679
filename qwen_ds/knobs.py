"""Every plan knob once: its CLI flag, the ``Plan`` / ``Workload`` field it sets (the Python API's
keyword), its default, and the DeepSpeed key it renders to.

The click options of estimate / plan / gen-config are generated from ``KNOBS``; the Python API takes
the same names as keywords; the planner's pinned knobs are the ``searched`` ones a user gave;
``validate.plan_from_config`` reads a config back into a Plan through ``DS_KEYS``; and a test holds
render(plan) read back equal to the plan for every key here. Adding a knob is one row here (plus its
``Plan`` field, and its line in the templates when DeepSpeed has a key for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .plan import INFER_PRECISIONS, KERNELS, LOSS_PATHS, MODES, OFFLOAD


@dataclass(frozen=True)
class Knob:
    name: str  # Plan / Workload field and Python API keyword
    flag: str  # CLI flag; a bool knob gets --flag/--no-flag
    kind: Any  # int, bool, or a tuple of allowed strings
    default: Any  # None: derived (see ``help``)
    help: str | None = None
    owner: str = "plan"  # "plan" or "workload"
    #: the planner chooses it unless pinned (given on the command line, or as an API keyword)
    searched: bool = False
    #: the click option lists its default in --help
    show_default: bool = True


KNOBS: tuple[Knob, ...] = (
    Knob("mode", "--mode", MODES, "train", owner="workload"),
    Knob("zero_stage", "--zero", (0, 1, 2, 3), None, "ZeRO stage 0-3 [train: 3, infer: 0].", searched=True),
    Knob("offload_optimizer", "--offload-optimizer", OFFLOAD, "none", searched=True),
    Knob("offload_param", "--offload-param", OFFLOAD, "none", searched=True),
    Knob("precision", "--precision", INFER_PRECISIONS, None,
         "Compute precision [bf16 where the GPU has it, else fp16]; int8 for inference weights only."),
    Knob("micro_batch", "--micro-batch", int, 1, "Sequences per GPU per step (inference: batch).", searched=True),
    Knob("grad_accum", "--grad-accum", int, 1, "Gradient accumulation steps (pipeline micro-batches in flight).", searched=True),
    Knob("seq_len", "--seq-len", int, 4096, "Tokens per sequence (inference: prompt length).", owner="workload"),
    Knob("new_tokens", "--new-tokens", int, 0, "Inference: tokens generated per sequence.", owner="workload"),
    Knob("checkpointing", "--checkpointing", bool, True, "Per-layer activation checkpointing.", searched=True),
    Knob("tp", "--tp", int, 1, "Tensor-parallel degree.", searched=True),
    Knob("pp", "--pp", int, 1, "Pipeline-parallel degree (ZeRO 0/1 only).", searched=True),
    Knob("loss", "--loss", LOSS_PATHS, "hf",
         "hf: plain forward with labels (full fp32 logits); chunked: the built-in runtime's chunked cross-entropy."),
    Knob("kernels", "--kernels", KERNELS, "hf",
         "hf: transformers defaults (sdpa, torch GDN fallback); fused: flash-attn / FLA / fused norms."),
)

BY_NAME = {k.name: k for k in KNOBS}
#: what the planner chooses unless pinned
SEARCHED = tuple(k.name for k in KNOBS if k.searched)


@dataclass(frozen=True)
class DsKey:
    """A Plan field a DeepSpeed config holds as one number: where (first key found wins), and the
    value DeepSpeed 0.19.8 uses when the config does not say. ``stage3``: DeepSpeed reads it only
    under ZeRO-3 (below, the field keeps the Plan's default)."""

    name: str
    keys: tuple[str, ...]
    ds_default: int
    stage3: bool = False


DS_KEYS: tuple[DsKey, ...] = (
    DsKey("micro_batch", ("train_micro_batch_size_per_gpu",), 1),
    DsKey("grad_accum", ("gradient_accumulation_steps",), 1),
    DsKey("tp", ("tensor_parallel.tp_size", "tensor_parallel.autotp_size"), 1),
    DsKey("reduce_bucket_size", ("zero_optimization.reduce_bucket_size",), 500_000_000),
    DsKey("allgather_bucket_size", ("zero_optimization.allgather_bucket_size",), 500_000_000),
    DsKey("prefetch_bucket_size", ("zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.prefetch_bucket_size"),
          50_000_000, stage3=True),
    DsKey("param_persistence_threshold", ("zero_optimization.stage3_param_persistence_threshold",
                                          "zero_optimization.param_persistence_threshold"), 100_000, stage3=True),
    DsKey("max_live_parameters", ("zero_optimization.stage3_max_live_parameters",), 1_000_000_000, stage3=True),
    DsKey("max_reuse_distance", ("zero_optimization.stage3_max_reuse_distance",), 1_000_000_000, stage3=True),
    DsKey("sub_group_size", ("zero_optimization.sub_group_size",), 1_000_000_000),
    DsKey("hpz_partition_size", ("zero_optimization.zero_hpz_partition_size",), 1, stage3=True),
)
#: Plan fields with a DeepSpeed key that is not one number (read by validate.plan_from_config):
#: zero_stage (zero_optimization.stage), offload_* (zero_optimization.offload_*.device), precision
#: (bf16/fp16.enabled, or an inference config's dtype), overlap_comm and quantized_* (booleans)
DS_SPECIAL = ("zero_stage", "offload_optimizer", "offload_param", "precision", "overlap_comm", "quantized_weights",
              "quantized_gradients")


def lookup(cfg: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key of a config, or None where any step is missing or not an object."""
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node
