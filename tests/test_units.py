"""Bytes per element: storage dtype vs the 16/32-bit compute dtype."""

import pytest

from qwen_ds.knobs import INFER_PRECISIONS
from qwen_ds.units import GIB, MIB, bytes_per_element, compute_bytes


@pytest.mark.parametrize("precision,stored,compute", [
    ("fp32", 4, 4), ("bf16", 2, 2), ("fp16", 2, 2), ("fp8", 1, 2), ("int8", 1, 2),
])
def test_bytes_per_element(precision, stored, compute):
    assert bytes_per_element(precision) == stored  # inference weights
    assert compute_bytes(precision) == compute  # training params/grads, activations, KV: fp8/int8 stay 16-bit


def test_every_precision_has_a_size():
    assert all(bytes_per_element(p) for p in INFER_PRECISIONS)


def test_unknown_precision_is_a_key_error():
    with pytest.raises(KeyError):
        bytes_per_element("fp4")


def test_units():
    assert (GIB, MIB) == (2**30, 2**20)
