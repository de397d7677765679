"""The memory-saving loss path: causal-LM cross-entropy over chunks of tokens, each chunk's logits
recomputed in backward, so the full [tokens, vocab] fp32 logits never exist (with V = 151,936 they
are often the largest activation). Matches the HF loss (mean over non-ignored shifted tokens)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def _chunk_loss(hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    logits = lm_head(hidden).float()
    if getattr(lm_head, "is_vocab_parallel_lm_head", False):
        # AutoTP's vocab-split head (tied embeddings): this rank holds logits of vocab rows [start, end);
        # DeepSpeed's vocab-parallel cross-entropy all-reduces max and sum over the TP group
        from deepspeed.sequence.cross_entropy import vocab_parallel_cross_entropy

        return vocab_parallel_cross_entropy(logits, labels, tp_group=lm_head.mp_group,
                                            vocab_start_index=lm_head.vocab_start_index,
                                            vocab_end_index=lm_head.vocab_end_index, ignore_index=IGNORE,
                                            reduction="sum")
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def compiled_chunk_loss():
    """The chunk's head matmul, fp32 cast and cross-entropy compiled into fused kernels (``train --compile``):
    eager, the cast and the log-softmax each read and write the chunk's [tokens, vocab] fp32 logits, twice
    a step with the recompute in backward."""
    return torch.compile(_chunk_loss)


def _frozen_zero3_head(lm_head: torch.nn.Module) -> bool:
    """A head whose ZeRO-3 partitioned weight does not train (LoRA, freeze): DeepSpeed 0.19.8 does not gather such a
    module's parameters when checkpoint() re-runs it in backward (the recompute sees the empty shard)."""
    params = getattr(lm_head, "parameters", None)  # the pipeline passes a functools.partial, never ZeRO-3
    return params is not None and any(hasattr(p, "ds_id") and not p.requires_grad for p in params())


class _FrozenHeadChunkLoss(torch.autograd.Function):
    """One chunk's summed cross-entropy through a frozen ZeRO-3 head, its logits recomputed in backward like the
    checkpointed path, with the head's weight gathered explicitly both times (F.linear on the gathered weight, no
    module hooks): only the hidden states get a gradient."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
        import deepspeed

        ctx.save_for_backward(hidden, labels)
        ctx.lm_head = lm_head
        with deepspeed.zero.GatheredParameters(list(lm_head.parameters()), modifier_rank=None), torch.no_grad():
            logits = F.linear(hidden, lm_head.weight, lm_head.bias).float()
            return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        import deepspeed

        hidden, labels = ctx.saved_tensors
        head = ctx.lm_head
        with deepspeed.zero.GatheredParameters(list(head.parameters()), modifier_rank=None), torch.enable_grad():
            h = hidden.detach().requires_grad_(True)
            logits = F.linear(h, head.weight.detach(), None if head.bias is None else head.bias.detach()).float()
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")
            (grad_hidden,) = torch.autograd.grad(loss, h, grad)
        return grad_hidden, None, None


def chunked_causal_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                           chunk: int = 1024, chunk_loss=_chunk_loss) -> torch.Tensor:
    frozen = _frozen_zero3_head(lm_head)
    h = hidden[:, :-1, :].reshape(-1, hidden.shape[-1])
    y = labels[:, 1:].reshape(-1)
    # train --fp8-head: float8 GEMMs need a chunk's token count (a dim of the weight-gradient GEMM) divisible by
    # 16; a chunk that is not gets padded with ignored tokens, which add no loss
    align = 16 if type(lm_head).__name__ == "Float8Linear" else 1
    count = (y != IGNORE).sum().clamp(min=1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk):
        hc, yc = h[i:i + chunk], y[i:i + chunk]
        pad = -yc.numel() % align
        if pad:
            hc = torch.cat([hc, hc.new_zeros(pad, hc.shape[-1])])
            yc = torch.cat([yc, yc.new_full((pad,), IGNORE)])
        if frozen:
            total = total + _FrozenHeadChunkLoss.apply(hc, yc, lm_head)
        else:
            total = total + checkpoint(chunk_loss, hc, yc, lm_head, use_reentrant=False)
    return total / count


def causal_lm_loss(model, input_ids: torch.Tensor, path: str, chunk: int = 1024,
                   chunk_loss=_chunk_loss) -> torch.Tensor:
    """path 'hf': model(input_ids, labels) (full fp32 logits); 'chunked': the path above, each chunk's loss
    by ``chunk_loss`` (``_chunk_loss`` or ``compiled_chunk_loss()``)."""
    if path == "hf":
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    if hasattr(model, "get_base_model"):  # a peft model (LoRA): its adapters live inside the base model's modules
        model = model.get_base_model()
    out = model.model(input_ids=input_ids, use_cache=False)
    return chunked_causal_lm_loss(out.last_hidden_state, model.lm_head, input_ids, chunk, chunk_loss)
