"""Byte units and bytes per element of each --precision, defined once."""

from __future__ import annotations

GIB = 1024**3
MIB = 1024**2

# bytes of one element stored in the --precision dtype
BYTES_PER_ELEMENT = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def bytes_per_element(precision: str) -> int:
    """Bytes of one element stored in ``precision``: fp32 4, bf16/fp16 2, fp8/int8 1.

    What is stored in that dtype: inference weights (int8 / FP8 weight-only quantization)."""
    return BYTES_PER_ELEMENT[precision]


def compute_bytes(precision: str) -> int:
    """Bytes of one element of a tensor kept at 16 bits or more: 4 for fp32, else 2.

    Training parameters and gradients, activations, KV cache, Gated-DeltaNet state and the ZeRO
    collectives: fp8 training keeps bf16 weights and activations (torchao converts only the matmul
    inputs), and int8 quantizes inference weights only."""
    return max(bytes_per_element(precision), 2)
