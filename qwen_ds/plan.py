"""Workload (what the user wants to run) and Plan (every knob that changes memory or speed).

Both are frozen; change a Plan with ``dataclasses.replace``. Validation raises InputError naming
the flag to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

MODES = ("train", "infer")
TRAIN_PRECISIONS = ("bf16", "fp16", "fp32", "fp8")  # int8 is for inference weights only
INFER_PRECISIONS = ("bf16", "fp16", "fp32", "fp8", "int8")
OFFLOAD = ("none", "cpu", "nvme")
LOSS_PATHS = ("hf", "chunked")
KERNELS = ("hf", "fused")
OPTIMIZERS = ("adamw",)


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

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise InputError(f"--zero {self.zero_stage}: choose 0, 1, 2 or 3")
        _choice("--offload-optimizer", self.offload_optimizer, OFFLOAD)
        _choice("--offload-param", self.offload_param, OFFLOAD)
        _choice("--precision", self.precision, INFER_PRECISIONS)
        _choice("--loss", self.loss, LOSS_PATHS)
        _choice("--kernels", self.kernels, KERNELS)
        for flag, value in (("--tp", self.tp), ("--pp", self.pp), ("--micro-batch", self.micro_batch), ("--grad-accum", self.grad_accum),
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
            raise InputError(f"--pp {self.pp} with --zero {self.zero_stage}: DeepSpeed's pipeline engine allows only ZeRO 0 or 1")

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
