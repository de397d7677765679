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


def chunked_causal_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor,
                           chunk: int = 1024, chunk_loss=_chunk_loss) -> torch.Tensor:
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
        total = total + checkpoint(chunk_loss, hc, yc, lm_head, use_reentrant=False)
    return total / count


def causal_lm_loss(model, input_ids: torch.Tensor, path: str, chunk: int = 1024,
                   chunk_loss=_chunk_loss) -> torch.Tensor:
    """path 'hf': model(input_ids, labels) (full fp32 logits); 'chunked': the path above, each chunk's loss
    by ``chunk_loss`` (``_chunk_loss`` or ``compiled_chunk_loss()``)."""
    if path == "hf":
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    out = model.model(input_ids=input_ids, use_cache=False)
    return chunked_causal_lm_loss(out.last_hidden_state, model.lm_head, input_ids, chunk, chunk_loss)
