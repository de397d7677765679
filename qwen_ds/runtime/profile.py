"""One training step under torch.profiler, written as a table of the operators and kernels that took the
step's time (``train --profile FILE``): on a GPU the kernels by their own device time, on the CPU the
operators by their own CPU time, each with its share of the total. What to fix first for MFU (issue #15)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


@contextlib.contextmanager
def profiled_step(path: str | None, enabled: bool, top: int = 25):
    """Profile the code inside when ``enabled``; then write the table to ``path`` (markdown)."""
    if not enabled or not path:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()
    Path(path).write_text(kernel_table(prof.key_averages(), cuda, top), encoding="utf-8")


def kernel_table(events, on_device: bool, top: int = 25) -> str:
    """Markdown: the ``top`` events by self time (device time on a GPU, CPU time otherwise) and their shares."""
    attr = "self_device_time_total" if on_device else "self_cpu_time_total"
    # on a GPU only the kernels (and copies) themselves: an operator's self device time is its kernels' time again
    mine = [e for e in events if getattr(e, attr, 0) > 0
            and (not on_device or getattr(e, "device_type", None) != torch.autograd.DeviceType.CPU)]
    rows = sorted(mine, key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in rows) or 1
    what = "device" if on_device else "CPU"
    lines = [f"| # | {'kernel' if on_device else 'operator'} | calls | self {what} ms | share |",
             "|---|---|---|---|---|"]
    for i, e in enumerate(rows[:top], 1):
        name = e.key.replace("|", "/")
        name = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| {i} | `{name}` | {e.count} | {getattr(e, attr) / 1000:.2f} | {getattr(e, attr) / total:.1%} |")
    rest = sum(getattr(e, attr) for e in rows[top:])
    lines.append(f"| | all others ({max(0, len(rows) - top)}) | | {rest / 1000:.2f} | {rest / total:.1%} |")
    lines.append(f"\nself {what} time of the step: {total / 1000:.1f} ms over {len(rows)} distinct "
                 f"{'kernels' if on_device else 'operators'}\n")
    return "\n".join(lines)
