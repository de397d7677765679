"""torch.compile of the decoder layers (regional compilation), the runtime's answer to the unfused
elementwise work that took a third of a Qwen3-4B step on an H200 (RMSNorm, q/k norms, RoPE, SwiGLU,
residual adds and their casts, each a separate kernel in eager mode; issue #15).

Each decoder layer is compiled in place (``nn.Module.compile``): the layers share their code, so Dynamo
traces one layer and the other layers reuse the graph (parameters are graph inputs), and the first step
pays one compile, not one per layer. Inductor caches the kernels on disk, so later runs on the machine
start faster. The embedding and final norm stay eager.

``--compile auto`` compiles where it was measured to pay: a CUDA device, dense Qwen3 layers, no pipeline
stages (the pipeline wraps each layer in its own module), ZeRO below 3 (ZeRO-3 fetches parameters in
hooks inside the layer, which break the graph at every parameter) and no tensor parallelism. With the layers
compiled, the chunked loss's per-chunk head, cast and cross-entropy are compiled too (runtime/loss.py).
``on`` compiles any family's layers where the run allows it, ``off`` never."""

from __future__ import annotations

import torch

from ..builtin import compile_reason  # noqa: F401  torch-free: the planner's speed model asks it too

CHOICES = ("auto", "on", "off")


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The HF model's decoder layers (``model.model.layers``), None for other layouts."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def compile_layers(model: torch.nn.Module) -> int:
    """Compile each decoder layer in place; the number compiled (0 when the model has no layer list)."""
    layers = decoder_layers(model)
    if layers is None:
        return 0
    for layer in layers:
        layer.compile()
    return len(layers)
