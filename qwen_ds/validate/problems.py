"""A problem found in a DeepSpeed config: where (JSON path), what, which rule, how bad; and the
Context the rules check a config in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hardware import GPU
    from ..models.spec import ModelSpec


@dataclass(frozen=True)
class Context:
    """What the user told us about the cluster and model; None = unknown, rule skipped."""

    world_size: int | None = None
    gpus_per_node: int | None = None
    pp: int = 1
    gpu: GPU | None = None
    model: ModelSpec | None = None
    known_top_level: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Problem:
    path: str  # JSON path, e.g. $.zero_optimization.offload_param
    message: str  # what is wrong and how to fix it, one line
    rule: str  # rule id, e.g. "auto", "batch", "schema", "deepspeed"
    severity: str = "error"  # error | warning

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message, "rule": self.rule, "severity": self.severity}


def json_path(parts) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out
