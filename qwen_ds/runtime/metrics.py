"""Per-step metrics (JSON lines) and the seed article's health thresholds, checked with the knob
that usually fixes each: compute efficiency, communication share < 15 %, fragmentation < 5 %."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass, field

import torch

COMM_SHARE_MAX = 0.15
FRAGMENTATION_MAX = 0.05
MFU_MIN = 0.25  # below this a GPU mostly waits (the seed's "GPU utilisation > 75 %", in model FLOPs)


def gpu_peak_tflops(precision: str) -> float | None:
    """Dense peak of this GPU from the catalog, None on CPU or an unknown GPU."""
    if not torch.cuda.is_available():
        return None
    from ..hardware import get_gpu, match_catalog
    from ..units import MIB

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    name, _how = match_catalog(props.name, props.total_memory // MIB)
    return get_gpu(name).peak_tflops(precision) if name else None


def comm_ms_and_reset() -> float | None:
    """Milliseconds spent in DeepSpeed collectives since the last call, or None when deepspeed.comm's
    comms logger (enabled by the trainer) is off. Read from the op timers themselves, then reset:
    DeepSpeed 0.19.8 records each op's latency as its timer's running total (``elapsed(reset=False)``
    in ``comm.timed_op``), so summing the logger's latencies counts every earlier op again and the
    share of the step reads as 100 %."""
    try:
        import deepspeed.comm as dist
        from deepspeed.comm import comm as comm_module
    except ImportError:
        return None
    logger = getattr(dist, "comms_logger", None)
    timers = getattr(comm_module, "timers", None)
    if logger is None or not getattr(logger, "enabled", False) or timers is None:
        return None
    total = 0.0
    for timer in list(getattr(timers, "timers", {}).values()):
        if not getattr(timer, "started_", False):
            total += timer.elapsed(reset=True)
    logger.comms_dict.clear()
    return total


@dataclass
class StepMeter:
    flops_per_token: float
    tokens_per_step: int
    world: int
    peak_tflops: float | None
    warned: set = field(default_factory=set)
    t0: float = 0.0

    def start(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        comm_ms_and_reset()
        self.t0 = time.perf_counter()

    def stop(self, step: int, loss: float) -> dict:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        comm = comm_ms_and_reset()
        tflops = self.flops_per_token * self.tokens_per_step / dt / self.world / 1e12
        rec = {"step": step, "loss": loss, "step_s": round(dt, 6), "tokens_per_s": self.tokens_per_step / dt,
               "tflops_per_gpu": tflops, "mfu": tflops / self.peak_tflops if self.peak_tflops else None,
               "comm_share": min(1.0, comm / 1000 / dt) if comm is not None else None}
        if torch.cuda.is_available():
            alloc, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            rec.update(peak_allocated_bytes=alloc, peak_reserved_bytes=reserved,
                       fragmentation=(reserved - alloc) / reserved if reserved else 0.0)
        else:
            rec.update(peak_allocated_bytes=None, peak_reserved_bytes=None, fragmentation=None,
                       max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return rec

    def health(self, rec: dict) -> list[str]:
        """Warnings, each once per run: which threshold is off and the knob that usually fixes it."""
        out = []
        checks = [
            ("comm", rec.get("comm_share") is not None and rec["comm_share"] > COMM_SHARE_MAX,
             f"communication takes {100 * (rec.get('comm_share') or 0):.0f}% of the step (> "
             f"{100 * COMM_SHARE_MAX:.0f}%): raise micro-batch or grad-accum, keep TP inside a node, or try ZeRO++ hpZ "
             "(--hpz GPUs per node)"),
            ("frag", rec.get("fragmentation") is not None and rec["fragmentation"] > FRAGMENTATION_MAX,
             f"allocator fragmentation {100 * (rec.get('fragmentation') or 0):.1f}% (> "
             f"{100 * FRAGMENTATION_MAX:.0f}%): set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (qwen-ds launch "
             "does) or lower stage3_max_live_parameters"),
            ("mfu", rec.get("mfu") is not None and rec["mfu"] < MFU_MIN,
             f"compute efficiency (MFU) {100 * (rec.get('mfu') or 0):.0f}% (< {100 * MFU_MIN:.0f}%): raise the "
             "micro-batch, turn checkpointing off if memory allows, use --loss chunked, or check the interconnect "
             "(qwen-ds doctor)"),
        ]
        for key, bad, msg in checks:
            if bad and key not in self.warned:
                self.warned.add(key)
                out.append(msg)
        return out


def append_jsonl(path: str, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def model_state_counts(engine) -> dict:
    """Elements of the model states this rank holds after an optimizer step: its parameters (a pipeline
    stage's layers, AutoTP's shards), the fp32 master partition of DeepSpeed's ZeRO optimizer (0 without
    one) and the optimizer states (Adam's m and v). What the estimator's per-GPU terms count. Under ZeRO-3
    ``params`` counts only what stays whole on every rank (the persistent small tensors; a partitioned parameter's
    data is empty) and ``partition`` the rank's shards of every parameter."""
    opt = engine.optimizer
    masters = getattr(opt, "single_partition_of_fp32_groups", None) or getattr(opt, "fp32_partitioned_groups_flat",
                                                                                None) or []
    inner = getattr(opt, "optimizer", opt)
    state = getattr(inner, "state", {})
    states = [v for st in state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"params": sum(p.numel() for p in engine.module.parameters()),
            "master": sum(t.numel() for t in masters), "states": sum(v.numel() for v in states),
            "partition": sum(p.ds_tensor.numel() for p in engine.module.parameters() if hasattr(p, "ds_tensor"))}


def model_states_by_rank(engine) -> list[dict]:
    """model_state_counts of every rank, in rank order, with its rank and pipeline stage (collective)."""
    import torch.distributed as dist

    grid = getattr(engine, "grid", None)
    mine = {"rank": dist.get_rank(), "stage": grid.get_stage_id() if grid is not None else 0,
            **model_state_counts(engine)}
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    return every


def allocator_note(plan_allocator: str, env: dict[str, str]) -> str | None:
    """When the CUDA allocator this process runs with is not the one the plan's reserved memory assumed
    (``--allocator``): what differs and how to make them agree. torch reads PYTORCH_CUDA_ALLOC_CONF (and the newer
    PYTORCH_ALLOC_CONF); qwen-ds launch sets expandable_segments:True."""
    conf = ",".join(env.get(k, "") for k in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")).replace(" ", "")
    expandable = "expandable_segments:true" in conf.lower()
    if plan_allocator == "expandable" and not expandable:
        return ("warning: the plan's reserved memory assumes expandable segments (--allocator expandable) but "
                "PYTORCH_CUDA_ALLOC_CONF does not set expandable_segments:True: reserved memory will run above the "
                "estimate; export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (qwen-ds launch does), or "
                "regenerate the plan with --allocator default")
    if plan_allocator == "default" and expandable:
        return ("note: the plan's reserved memory assumes torch's default allocator (--allocator default); with "
                "expandable segments set, reserved memory will stay below the estimate")
    return None
