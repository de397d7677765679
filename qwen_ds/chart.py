"""Stacked-bar PNG of the memory terms of the top plans against the GPU limit (needs matplotlib,
imported only here: `pip install qwen-ds[chart]`)."""

from __future__ import annotations

from .errors import InputError, one_line
from .hardware import Cluster

GIB = 1024**3
GROUPS = {  # term name prefix -> bar segment
    "params": "params", "hpz_secondary_params": "params", "gradients": "gradients", "master_weights_fp32": "optimizer",
    "optimizer_states": "optimizer", "step_fp32_grads": "optimizer", "activations": "activations",
    "final_norm_and_head": "activations", "logits_and_logsoftmax": "logits / loss", "loss_backward": "logits / loss",
    "loss_chunk": "logits / loss", "reduce_buckets": "DeepSpeed buffers", "zero3_gathered_params": "DeepSpeed buffers",
    "zero3_gathered_grads": "DeepSpeed buffers", "zero3_persistent_params": "DeepSpeed buffers",
    "cuda_context": "CUDA / NCCL", "nccl_buffers": "CUDA / NCCL",
}


def _segments(cand) -> dict[str, float]:
    m = cand.memory
    out: dict[str, float] = {}
    for t in m.gpu_terms:
        key = next((g for prefix, g in GROUPS.items() if t.name.startswith(prefix)), "other")
        out[key] = out.get(key, 0.0) + t.bytes / GIB
    out["fragmentation"] = (m.gpu_reserved_bytes - m.gpu_allocated_bytes) / GIB
    # exclusive peaks are drawn as the sum of all terms; the bar total is the estimate's GPU total
    overshoot = sum(out.values()) - m.gpu_total_bytes / GIB
    if overshoot > 0 and "activations" in out:
        out["activations"] = max(0.0, out["activations"] - overshoot)
    return out


def _label(i: int, c) -> str:
    p = c.plan
    off = [k for k, v in (("opt", p.offload_optimizer), ("param", p.offload_param)) if v != "none"]
    line1 = f"#{i} ZeRO-{p.zero_stage}" + (f" tp{p.tp}" if p.tp > 1 else "") + (f" pp{p.pp}" if p.pp > 1 else "")
    line2 = ("offload " + "+".join(off) if off else "no offload")
    return f"{line1}\n{line2}\nmb {p.micro_batch}, ckpt {'on' if p.checkpointing else 'off'}"


def memory_chart(cands, cluster: Cluster, headroom: float, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--chart needs matplotlib: pip install 'qwen-ds[chart]' (or pip install matplotlib)") from None
    segs = [_segments(c) for c in cands]
    keys = [k for k in ("params", "gradients", "optimizer", "activations", "logits / loss", "DeepSpeed buffers",
                        "CUDA / NCCL", "fragmentation", "other") if any(s.get(k) for s in segs)]
    labels = [_label(i, c) for i, c in enumerate(cands, 1)]
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(cands) + 2.5), 5))
    bottom = [0.0] * len(cands)
    for k in keys:
        vals = [s.get(k, 0.0) for s in segs]
        ax.bar(labels, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    cap = cluster.gpu.memory_bytes / GIB
    ax.axhline(cap, color="black", linewidth=1.5, label=f"{cluster.gpu.name} {cap:.0f} GiB")
    ax.axhline(cap * headroom, color="black", linestyle="--", linewidth=1, label=f"usable ({headroom:.0%})")
    ax.set_ylabel("GiB per GPU")
    ax.set_title(f"qwen-ds plan: memory per GPU of the top plans ({cluster.nodes} x {cluster.gpus_per_node} {cluster.gpu.name})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.setp(ax.get_xticklabels(), fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise InputError(f"--chart {one_line(path)}: cannot write it ({one_line(exc.strerror or exc)})") from None
    finally:
        plt.close(fig)
