"""Training batches: learnable synthetic sequences, or a local jsonl / text file tokenised with a
local tokenizer. A step's micro-batches are numbered j = micro_step x dp + dp_rank (0 <= j < dp x
grad_accum) and each is a pure function of (seed, step, j): a resumed run sees exactly the batches
the uninterrupted run saw, the ranks of one tensor-parallel group (one dp rank) get the same batch,
and a tp / pp run trains on the tokens of the data-parallel run of as many ranks and the same global
batch."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .common import RuntimeFailure


def synthetic_batch(vocab: int, micro: int, seq: int, seed: int, step: int, rank: int, micro_step: int) -> torch.Tensor:
    """Arithmetic sequences mod vocab (start and stride random per row): a pattern a model can learn,
    so the loss really falls, unlike uniform random tokens."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + rank) * 101 + micro_step)
    start = torch.randint(0, vocab, (micro, 1), generator=g)
    stride = torch.randint(1, 8, (micro, 1), generator=g)
    return (start + stride * torch.arange(seq)) % vocab


def sample_index(dp_rank: int, dp: int, micro_step: int) -> int:
    """Number j of the micro-batch that data-parallel rank dp_rank of dp runs at micro_step."""
    return micro_step * dp + dp_rank


def synthetic_sample(vocab: int, micro: int, seq: int, seed: int, step: int, j: int, world: int) -> torch.Tensor:
    """Micro-batch j of a step: the one a data-parallel run of ``world`` ranks draws on rank j % world at
    micro-step j // world (so a dp-only run keeps the batches of synthetic_batch by rank)."""
    return synthetic_batch(vocab, micro, seq, seed, step, j % world, j // world)


class TokenFile:
    """Packs a text corpus (.txt, or .jsonl with a "text" field) into seq-long rows, once, then
    serves rows by index: micro-batch j of a step of per_step micro-batches starts at row
    (step * per_step + j) * micro (wrapping around)."""

    def __init__(self, path: str, tokenizer_dir: str, seq: int):
        from transformers import AutoTokenizer

        p = Path(path)
        if not p.is_file():
            raise RuntimeFailure(f"--data {path}: no such file")
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except Exception as exc:  # transformers raises OSError / ValueError variants
            raise RuntimeFailure(f"--tokenizer {tokenizer_dir}: cannot load a local tokenizer ({exc})") from None
        texts = []
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if p.suffix == ".jsonl":
                    if line.strip():
                        try:
                            texts.append(json.loads(line)["text"])
                        except (ValueError, KeyError, TypeError):
                            raise RuntimeFailure(f"{path} line {n}: expected a JSON object with a \"text\" "
                                                 "field") from None
                else:
                    texts.append(line)
        ids: list[int] = []
        for t in texts:
            ids.extend(tok(t, add_special_tokens=False)["input_ids"])
            if tok.eos_token_id is not None:
                ids.append(tok.eos_token_id)
        if len(ids) < seq:
            raise RuntimeFailure(f"--data {path}: {len(ids)} tokens, fewer than one sequence of {seq}")
        self.rows = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)

    def batch(self, micro: int, step: int, j: int, per_step: int) -> torch.Tensor:
        base = (step * per_step + j) * micro
        idx = torch.arange(base, base + micro) % self.rows.shape[0]
        return self.rows[idx]
