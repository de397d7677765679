"""Stacked-bar chart (PNG, SVG, PDF, ...) of the memory terms of the top plans against the GPU limit
(needs matplotlib, imported only here: `pip install qwen-ds[chart]`)."""

from __future__ import annotations

from pathlib import Path

from .errors import InputError, one_line
from .hardware import Cluster
from .publish import check_targets, publish_file
from .units import GIB

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


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--chart needs matplotlib: pip install 'qwen-ds[chart]' (or pip install matplotlib)") from None
    return plt


def chart_format(path: str, force: bool) -> str:
    """The format the file name asks for (png without a suffix), checked before any work: a format
    matplotlib writes, and no existing file unless ``force``."""
    _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    fmt = Path(path).suffix[1:].lower() or "png"
    if fmt not in supported:
        raise InputError(f"--chart {one_line(path)}: matplotlib cannot write .{one_line(fmt)} files; end the name with "
                         f"one of {', '.join('.' + k for k in sorted(supported))}")
    parent = Path(path).parent
    if not parent.is_dir():
        raise InputError(f"--chart {one_line(path)}: {one_line(parent)} is not a directory; create it or choose "
                         "another --chart")
    check_targets(parent, [Path(path).name], force, "--chart")
    return fmt


def memory_chart(cands, cluster: Cluster, headroom: float, path: str, force: bool = False) -> None:
    plt = _pyplot()
    fmt = chart_format(path, force)
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
    ax.set_title(f"qwen-ds plan: memory per GPU of the top plans ({cluster.nodes} x {cluster.gpus_per_node} "
                 f"{cluster.gpu.name})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.setp(ax.get_xticklabels(), fontsize=8)
    fig.tight_layout()

    def save(tmp: str) -> None:
        try:
            fig.savefig(tmp, dpi=110, format=fmt)
        except (OSError, ValueError) as exc:  # ValueError: a writer matplotlib lists but lacks (e.g. Pillow for .webp)
            why = one_line(getattr(exc, "strerror", None) or exc)[:160]
            raise InputError(f"--chart {one_line(path)}: cannot write it ({why})") from None

    try:
        publish_file(Path(path), save, force, "--chart")
    finally:
        plt.close(fig)
