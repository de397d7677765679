"""MemoryBreakdown: named terms per GPU and per node, and how they add up to a peak.

Phases: ``persistent`` terms live the whole step. ``fwd_bwd`` terms live through backward.
``loss`` terms (logits, fp32 log-softmax and their grads) peak at the start of backward; with
checkpointing, the ``recompute`` term (one layer re-run) comes later, after the loss transients
are freed, so the two are exclusive peaks. ``step`` terms coexist during the optimizer step, when
activations are gone. Peak allocated = persistent + max(fwd_bwd + max(loss, recompute), step)
(measured on H200: benchmarks/results/activation_gpu_h200_2026-11-28.md). Reserved adds allocator
fragmentation; the GPU total adds what lives outside PyTorch's allocator (CUDA context, NCCL).

CPU terms (per node): ``persistent`` terms (offloaded optimizer states, parameters, swap buffers)
live through training and add up; the ``load`` term (``load_peak``: the weights every rank holds in
host RAM while the model is built, before deepspeed.initialize moves or partitions them) is gone by
the first step, so the node's CPU total is max(load peak, sum of the steady terms), not their sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PHASES = ("persistent", "fwd_bwd", "loss", "recompute", "step", "outside", "load")  # load: CPU terms only


@dataclass(frozen=True)
class Term:
    name: str
    bytes: int
    phase: str  # persistent | fwd_bwd | loss | recompute | step | outside (not in torch's allocator) | load (CPU)
    formula: str  # the formula with the numbers filled in, for --explain / the table


@dataclass(frozen=True)
class MemoryBreakdown:
    gpu_terms: tuple[Term, ...]
    cpu_terms: tuple[Term, ...] = ()  # per node
    nvme_terms: tuple[Term, ...] = ()  # per node
    fragmentation: float = 0.0
    gpu_memory_bytes: int = 0
    notes: tuple[str, ...] = field(default=())

    def _phase(self, phase: str) -> int:
        return sum(t.bytes for t in self.gpu_terms if t.phase == phase)

    @property
    def backward_peak_bytes(self) -> int:
        return self._phase("fwd_bwd") + max(self._phase("loss"), self._phase("recompute"))

    @property
    def peak_phase(self) -> str:
        if self._phase("step") > self.backward_peak_bytes:
            return "step"
        if not self._phase("loss") and not self._phase("recompute"):
            return "forward"  # inference: prefill transients on top of weights and caches
        return "loss backward" if self._phase("loss") >= self._phase("recompute") else "layer recompute"

    @property
    def gpu_allocated_bytes(self) -> int:
        """Predicted torch.cuda.max_memory_allocated()."""
        return self._phase("persistent") + max(self.backward_peak_bytes, self._phase("step"))

    @property
    def gpu_reserved_bytes(self) -> int:
        """Predicted torch.cuda.max_memory_reserved(): allocated plus allocator slack."""
        return int(self.gpu_allocated_bytes * (1 + self.fragmentation))

    @property
    def gpu_total_bytes(self) -> int:
        """What the GPU must hold: reserved + CUDA context and NCCL buffers (nvidia-smi view)."""
        return self.gpu_reserved_bytes + self._phase("outside")

    @property
    def cpu_steady_bytes_per_node(self) -> int:
        """CPU terms resident during training (offload): they add up."""
        return sum(t.bytes for t in self.cpu_terms if t.phase != "load")

    @property
    def cpu_load_peak_bytes_per_node(self) -> int:
        """Host RAM while the model is loaded, before deepspeed.initialize (the ``load`` terms)."""
        return sum(t.bytes for t in self.cpu_terms if t.phase == "load")

    @property
    def cpu_peak_at_load(self) -> bool:
        """True when the load peak, not the steady offload terms, sets the node's CPU total."""
        return self.cpu_load_peak_bytes_per_node > self.cpu_steady_bytes_per_node

    @property
    def cpu_total_bytes_per_node(self) -> int:
        """What a node's RAM must hold: max(load peak, steady terms); the load peak is gone by the first step."""
        return max(self.cpu_steady_bytes_per_node, self.cpu_load_peak_bytes_per_node)

    @property
    def nvme_total_bytes_per_node(self) -> int:
        return sum(t.bytes for t in self.nvme_terms)

    @property
    def fits(self) -> bool:
        return self.gpu_total_bytes <= self.gpu_memory_bytes

    def terms_dict(self) -> dict[str, int]:
        return {t.name: t.bytes for t in self.gpu_terms}
