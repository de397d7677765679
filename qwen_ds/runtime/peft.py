"""Fine-tuning methods in the built-in trainer (issue #17): LoRA with peft, QLoRA (peft on a base whose nn.Linear
weights bitsandbytes stores in NF4), freeze by requires_grad. The plan's knobs say what trains
(qwen_ds/models/finetune.py counts the same parameters and the same 4-bit weights)."""

from __future__ import annotations

import hashlib

import torch

from .common import RuntimeFailure


def apply_finetune(model, knobs, device: torch.device, zero_stage: int):
    """The model to train under the plan's --finetune (a peft model for LoRA / QLoRA), and a line saying what trains.
    QLoRA first quantizes the base on ``device`` (quantize_linears)."""
    method = knobs.finetune
    if method == "full":
        return model, None
    quantized = ""
    if method == "qlora":
        if zero_stage == 3:
            raise RuntimeFailure("--finetune qlora under ZeRO-3: the built-in trainer keeps the 4-bit base whole on "
                                 "each GPU (ZeRO 0-2); regenerate with gen-config --zero 2")
        n, weights = quantize_linears(model, device)
        quantized = f"; {n} Linear layers ({weights:,} weights) in NF4 on {device.type}"
    if method == "freeze":
        trained = freeze_layers(model, knobs.freeze_layers, knobs.trainable_modules)
        return model, f"freeze: {trained:,} parameters train ({knobs.freeze_layers} layers, {knobs.trainable_modules})"
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RuntimeFailure("--finetune lora needs peft: pip install 'qwen-ds[peft]'") from None
    text = knobs.lora_targets.strip()
    targets = "all-linear" if text.lower() == "all-linear" else [t.strip() for t in text.split(",") if t.strip()]
    cfg = LoraConfig(r=knobs.lora_rank, lora_alpha=knobs.lora_alpha or 2 * knobs.lora_rank, lora_dropout=0.0,
                     target_modules=targets, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    n = sum(_numel(p) for p in peft_model.parameters() if p.requires_grad)
    return peft_model, (f"{method}: r {cfg.r}, alpha {cfg.lora_alpha}, targets {text}: {n:,} adapter parameters "
                        f"train{quantized}")


def quantize_linears(model, device: torch.device) -> tuple[int, int]:
    """QLoRA's base, as transformers' bitsandbytes integration makes it: every nn.Linear but the output head becomes
    bitsandbytes' Linear4bit (NF4, double quantization, computing in the weights' dtype), quantized when it moves to
    ``device`` (one layer at a time: the 16-bit copy of the whole model never sits there). The embedding, norms, head,
    MoE routers and fused routed experts (not nn.Linear) stay 16-bit. Returns (layers, weights quantized)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise RuntimeFailure("--finetune qlora needs bitsandbytes: pip install 'qwen-ds[qlora]'") from None
    head = model.get_output_embeddings()
    layers = weights = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            w = child.weight.data
            q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                  compute_dtype=w.dtype, compress_statistics=True, quant_type="nf4", device="meta")
            q.weight = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=True, quant_type="nf4")
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, q.to(device))  # Params4bit quantizes on its first move to a device
            layers += 1
            weights += w.numel()
    return layers, weights


def _numel(p: torch.Tensor) -> int:
    return getattr(p, "ds_numel", p.numel())  # a ZeRO-3 partitioned parameter holds only its shard


def freeze_layers(model, layers: int, modules: str) -> int:
    """requires_grad only on the last ``layers`` decoder layers (the first -layers when negative), on all their
    parameters or those below the named sub-modules; the count that trains."""
    from .compiled import decoder_layers

    blocks = decoder_layers(model)
    if blocks is None:
        raise RuntimeFailure("--finetune freeze: this model has no decoder layer list to choose layers from")
    n = len(blocks)
    chosen = set(range(n - layers, n) if layers > 0 else range(0, -layers))
    wanted = [m.strip() for m in modules.split(",") if m.strip()]
    for p in model.parameters():
        p.requires_grad_(False)
    trained = 0
    for i, block in enumerate(blocks):
        if i not in chosen:
            continue
        for name, p in block.named_parameters():
            if "all" in wanted or name.split(".", 1)[0] in wanted:
                p.requires_grad_(True)
                trained += _numel(p)
    return trained


def frozen_digest(model) -> str:
    """sha256 over the frozen parameters in name order, gathered when ZeRO-3 partitions them (every rank calls it):
    the trainer checks that training leaves the base as it found it."""
    frozen = [(name, p) for name, p in model.named_parameters() if not p.requires_grad]
    h = hashlib.sha256()
    partitioned = [p for _, p in frozen if hasattr(p, "ds_id")]
    if partitioned:
        import deepspeed

        ctx = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        for name, p in frozen:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def save_adapter(engine, out: str, rank: int) -> None:
    """The LoRA adapter (peft's save_pretrained) in ``out``, its parameters gathered under ZeRO-3."""
    model = engine.module
    trained = [p for p in model.parameters() if p.requires_grad and hasattr(p, "ds_id")]
    import contextlib

    import deepspeed

    ctx = deepspeed.zero.GatheredParameters(trained, modifier_rank=None) if trained else contextlib.nullcontext()
    with ctx:
        if rank == 0:
            model.save_pretrained(out)
