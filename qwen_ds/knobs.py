"""Workload (what the user wants to run), Plan (every knob that changes memory or speed), and every
plan knob once: its CLI flag, the ``Plan`` / ``Workload`` field it sets (the Python API's
keyword), its default, and the DeepSpeed key it renders to.

The click options of estimate / plan / gen-config are generated from ``KNOBS``; the Python API takes
the same names as keywords; the planner's pinned knobs are the ``searched`` ones a user gave;
``validate.plan_from_config`` reads a config back into a Plan through ``DS_KEYS``; and a test holds
render(plan) read back equal to the plan for every key here. Adding a knob is one row here (plus its
``Plan`` field, and its line in the templates when DeepSpeed has a key for it).

Workload and Plan are frozen; change a Plan with ``dataclasses.replace``. Their validation raises
InputError naming the flag to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InputError
from .models.finetune import FINETUNE_METHODS

MODES = ("train", "infer")
TRAIN_PRECISIONS = ("bf16", "fp16", "fp32", "fp8")  # int8 is for inference weights only
INFER_PRECISIONS = ("bf16", "fp16", "fp32", "fp8", "int8")
OFFLOAD = ("none", "cpu", "nvme")
LOSS_PATHS = ("hf", "chunked")
KERNELS = ("hf", "fused")
#: PyTorch's CUDA caching allocator as the run configures it: expandable segments (PYTORCH_CUDA_ALLOC_CONF=
#: expandable_segments:True, which qwen-ds launch sets) or torch's default segments (a plain deepspeed /
#: accelerate / torchrun launch), whose slack at peak is larger (data/calibration.json)
ALLOCATORS = ("expandable", "default")
OPTIMIZERS = ("adamw",)


#: the Plan fields that say what trains (qwen_ds/models/finetune.py): a DeepSpeed config does not say them, so
#: estimate --config / validate take them from flags or a LLaMA-Factory YAML
FINETUNE_KNOBS = ("finetune", "lora_rank", "lora_alpha", "lora_targets", "freeze_layers", "trainable_modules")


@dataclass(frozen=True)
class Workload:
    """mode train: seq_len tokens per sample. mode infer: seq_len prompt tokens + new_tokens generated."""

    mode: str = "train"
    seq_len: int = 4096
    new_tokens: int = 0
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        _choice("--mode", self.mode, MODES)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _positive("--seq-len", self.seq_len)
        if self.new_tokens < 0:
            raise InputError(f"--new-tokens {self.new_tokens}: must be >= 0")

    @property
    def context_len(self) -> int:
        return self.seq_len + self.new_tokens


@dataclass(frozen=True)
class Plan:
    """Parallel layout and memory knobs. Bucket sizes are elements; None = derived from the model
    the way the HF integration does it (h*h, int(0.9*h*h), 10*h), always concrete integers."""

    zero_stage: int = 3
    offload_optimizer: str = "none"
    offload_param: str = "none"
    tp: int = 1
    pp: int = 1
    micro_batch: int = 1
    grad_accum: int = 1
    checkpointing: bool = True
    precision: str = "bf16"
    loss: str = "hf"
    kernels: str = "hf"
    allocator: str = "expandable"
    overlap_comm: bool = True
    reduce_bucket_size: int | None = None
    allgather_bucket_size: int | None = None
    prefetch_bucket_size: int | None = None
    param_persistence_threshold: int | None = None
    max_live_parameters: int = 1_000_000_000
    max_reuse_distance: int = 1_000_000_000
    sub_group_size: int = 1_000_000_000
    #: ZeRO++: hierarchical partition size (hpZ, secondary param copy inside a node), qwZ, qgZ
    hpz_partition_size: int = 1
    quantized_weights: bool = False
    quantized_gradients: bool = False
    #: fine-tuning method (qwen_ds/models/finetune.py): full, lora, qlora (4-bit NF4 base), freeze
    finetune: str = "full"
    lora_rank: int = 16
    lora_alpha: int | None = None  # None: 2 x lora_rank (LLaMA-Factory's default)
    lora_targets: str = "all-linear"
    freeze_layers: int = 2  # freeze: the last N decoder layers train (the first -N when negative)
    trainable_modules: str = "all"  # freeze: their sub-modules that train (comma-separated) or all

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise InputError(f"--zero {self.zero_stage}: choose 0, 1, 2 or 3")
        _choice("--offload-optimizer", self.offload_optimizer, OFFLOAD)
        _choice("--offload-param", self.offload_param, OFFLOAD)
        _choice("--precision", self.precision, INFER_PRECISIONS)
        _choice("--loss", self.loss, LOSS_PATHS)
        _choice("--kernels", self.kernels, KERNELS)
        _choice("--allocator", self.allocator, ALLOCATORS)
        _choice("--finetune", self.finetune, FINETUNE_METHODS)
        _positive("--lora-rank", self.lora_rank)
        if self.lora_alpha is not None:
            _positive("--lora-alpha", self.lora_alpha)
        if isinstance(self.freeze_layers, bool) or not isinstance(self.freeze_layers, int) or self.freeze_layers == 0:
            raise InputError(f"--freeze-layers {self.freeze_layers!r}: a non-zero integer (N: the last N layers train, "
                             "-N: the first N)")
        if self.finetune == "qlora" and self.precision not in ("bf16", "fp16"):
            raise InputError(f"--finetune qlora with --precision {self.precision}: QLoRA computes in bf16 or fp16 over "
                             "its 4-bit base; choose --precision bf16 or fp16")
        for flag, value in (("--tp", self.tp), ("--pp", self.pp), ("--micro-batch", self.micro_batch),
                            ("--grad-accum", self.grad_accum),
                            ("--hpz", self.hpz_partition_size)):
            _positive(flag, value)
        if self.offload_param != "none" and self.zero_stage != 3:
            raise InputError(
                f"--offload-param {self.offload_param} needs --zero 3 (got --zero {self.zero_stage}); "
                "DeepSpeed silently ignores offload_param below stage 3"
            )
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise InputError(f"--offload-optimizer {self.offload_optimizer} needs --zero 1, 2 or 3 (got --zero 0)")
        if (self.hpz_partition_size > 1 or self.quantized_weights) and self.zero_stage != 3:
            raise InputError(f"ZeRO++ (--hpz / --quantized-weights) needs --zero 3 (got --zero {self.zero_stage})")
        if self.pp > 1 and self.zero_stage >= 2:
            raise InputError(f"--pp {self.pp} with --zero {self.zero_stage}: "
                             "DeepSpeed's pipeline engine allows only ZeRO 0 or 1")

    def dp(self, world: int) -> int:
        """Data-parallel degree: ranks holding the same model shard (ZeRO partitions over these)."""
        return data_parallel(world, self.tp, self.pp)

    def batch_ranks(self, world: int) -> int:
        """Ranks DeepSpeed 0.19.8 counts in train_batch_size = micro x grad_accum x ranks. Not ``dp``:
        without an mpu, AutoTP ranks count too (world / pp); see ``deepspeed_batch_ranks``."""
        return deepspeed_batch_ranks(world, self.pp)

    def buckets(self, hidden_size: int) -> dict[str, int]:
        """Concrete bucket sizes (elements); HF's 'auto' rules where the plan leaves them open."""
        h2 = hidden_size * hidden_size
        return {
            "reduce_bucket_size": self.reduce_bucket_size or h2,
            "allgather_bucket_size": self.allgather_bucket_size or h2,
            "prefetch_bucket_size": self.prefetch_bucket_size or int(0.9 * h2),
            "param_persistence_threshold": self.param_persistence_threshold
            if self.param_persistence_threshold is not None
            else 10 * hidden_size,
        }


def data_parallel(world: int, tp: int = 1, pp: int = 1) -> int:
    """The one formula for the data-parallel degree (``Plan.dp``): world / (tp x pp)."""
    return world // (tp * pp)


def deepspeed_batch_ranks(world: int, pp: int = 1, sequence_parallel: int = 1) -> int:
    """Ranks in DeepSpeed 0.19.8's train_batch_size = micro x grad_accum x ranks check: without an
    mpu it takes the whole world divided by sequence_parallel_size (AutoTP ranks count), and the
    pipeline engine its data-parallel group (world / pp)."""
    return max(1, world // (max(pp, 1) * max(sequence_parallel, 1)))


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{flag} {value!r}: choose one of {', '.join(allowed)}")


def _positive(flag: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{flag} {value!r}: must be a positive integer")

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
    Knob("grad_accum", "--grad-accum", int, 1, "Gradient accumulation steps (pipeline micro-batches in flight).",
         searched=True),
    Knob("seq_len", "--seq-len", int, 4096, "Tokens per sequence (inference: prompt length).", owner="workload"),
    Knob("new_tokens", "--new-tokens", int, 0, "Inference: tokens generated per sequence.", owner="workload"),
    Knob("checkpointing", "--checkpointing", bool, True, "Per-layer activation checkpointing.", searched=True),
    Knob("tp", "--tp", int, 1, "Tensor-parallel degree.", searched=True),
    Knob("pp", "--pp", int, 1, "Pipeline-parallel degree (ZeRO 0/1 only).", searched=True),
    Knob("loss", "--loss", LOSS_PATHS, "hf",
         "hf: plain forward with labels (full fp32 logits); chunked: the built-in runtime's chunked cross-entropy."),
    Knob("kernels", "--kernels", KERNELS, "hf",
         "hf: transformers defaults (sdpa, torch GDN fallback); fused: flash-attn / FLA / fused norms."),
    Knob("finetune", "--finetune", FINETUNE_METHODS, "full",
         "What trains: full (every parameter), lora (adapters on a frozen 16-bit base, peft), qlora (adapters on a "
         "4-bit NF4 base, double quantization, bitsandbytes), freeze (the last --freeze-layers layers)."),
    Knob("lora_rank", "--lora-rank", int, 16, "LoRA / QLoRA rank r."),
    Knob("lora_alpha", "--lora-alpha", int, None, "LoRA alpha [2 x --lora-rank].", show_default=False),
    Knob("lora_targets", "--lora-targets", str, "all-linear",
         "LoRA target modules: all-linear (peft's shorthand; on Qwen3-MoE / Qwen3-Next it includes the router and "
         "the fused routed experts) or names, e.g. q_proj,k_proj,v_proj,o_proj."),
    Knob("freeze_layers", "--freeze-layers", int, 2, "Freeze: the last N decoder layers train (-N: the first N)."),
    Knob("trainable_modules", "--trainable-modules", str, "all",
         "Freeze: the sub-modules of those layers that train (mlp, self_attn, linear_attn, ...) or all."),
    Knob("allocator", "--allocator", ALLOCATORS, None,
         "PyTorch CUDA allocator of the run: expandable (expandable_segments, set by qwen-ds launch) or default "
         "(plain deepspeed / accelerate / HF Trainer launches; more reserved slack) [expandable; gen-config --for "
         "hf-trainer / accelerate: default].", show_default=False),
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
    DsKey("prefetch_bucket_size",
          ("zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.prefetch_bucket_size"),
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
