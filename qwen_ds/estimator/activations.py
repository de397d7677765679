"""Training activation memory: bytes saved for backward, per token, per layer sub-block.

Two kernel sets:
- ``hf``: transformers' modules as they run by default (sdpa attention, RMSNorm in fp32, the torch
  fallback of Gated DeltaNet, grouped_mm MoE). Coefficients measured with
  torch.autograd.graph.saved_tensors_hooks (benchmarks/activation_probe.py, results in
  benchmarks/results/activation_saved_tensors_cpu_2026-11-28.md; reference/qwen-models.md §4).
- ``fused``: flash attention, fused RMSNorm (input + rstd), FLA Gated DeltaNet kernels: the lower
  bounds of reference/qwen-models.md §4.
Symbols: h hidden, q = nH*hd, kv = nKV*hd, I intermediate, E experts, k top-k, Im / Is MoE /
shared-expert widths, kd = nk*dk, vd = nv*dv, V vocab. All in bytes per token for bf16/fp16
activations; fp32 training doubles the 16-bit parts (modelled as x2).
Per-layer checkpointing (HF gradient_checkpointing) keeps each layer's input (2h per token) and
recomputes one layer at a time in backward.
"""

from __future__ import annotations

from ..calibration import constant
from ..models.spec import LINEAR_ATTENTION, MOE, ModelSpec
from ..plan import Plan
from .breakdown import Term
from .layout import Layout


def norm_bytes(s: ModelSpec, kernels: str) -> int:
    """One RMSNorm. HF: fp32 upcast input 4h + bf16 output 2h + fp32 rstd 4 (6h+4); Qwen3-Next's
    zero-centred norm keeps fp32 input and fp32 normed (8h+4). Fused: input 2h + rstd 4."""
    h = s.hidden_size
    if kernels == "fused":
        return 2 * h + 4
    return (8 if s.family == "qwen3_next" else 6) * h + 4


def attention_bytes(s: ModelSpec, kernels: str) -> int:
    """Dense GQA attention (Llama, Qwen2, Qwen3). HF sdpa: projections' outputs, q/k-norm fp32
    internals (Qwen3), RoPE operands, sdpa q/k/v/out + fp32 logsumexp 4nH. Fused: 2h + 4q + 4kv."""
    h, q, kv, nh = s.hidden_size, s.q_dim, s.kv_dim, s.num_heads
    if kernels == "fused":
        return 2 * h + 4 * q + 4 * kv + 4 * nh
    extra = 6 * q + 6 * kv + 4 * nh if s.family in ("qwen3", "qwen3_moe") else 0
    return 6 * q + 6 * kv + 4 * nh + extra


def gated_attention_bytes(s: ModelSpec, kernels: str) -> int:
    """Qwen3-Next gated attention: as dense attention plus the sigmoid output gate (query and gate
    from one q_proj, gate sigmoid kept, gated output kept for o_proj)."""
    h, q, kv, nh = s.hidden_size, s.q_dim, s.kv_dim, s.num_heads
    if kernels == "fused":
        return 2 * h + 10 * q + 4 * kv + 4 * nh
    return 16 * q + 12 * kv + 4 * nh


def gated_deltanet_bytes(s: ModelSpec, kernels: str) -> int:
    """Qwen3-Next Gated DeltaNet. Fused (FLA chunk kernel): q,k,v + rstds, g, beta, A [64 per head]
    plus projections and conv. HF torch fallback upcasts q, k, v, beta, g to fp32 and keeps the
    per-chunk matrices: several times more."""
    h = s.hidden_size
    nk, nv = s.linear_num_key_heads, s.linear_num_value_heads
    kd, vd = nk * s.linear_key_head_dim, nv * s.linear_value_head_dim
    proj = 2 * h + 2 * (2 * kd + 2 * vd) + 2 * 2 * nv  # input, in_proj outputs
    conv = 2 * (2 * kd + vd) * 2  # conv input and SiLU output
    if kernels == "fused":
        chunk = 2 * kd + 2 * kd + 2 * vd + 8 * nv + 4 * nv * 64 + 2 * vd * 3
        return proj + conv + chunk
    fallback = 4 * (2 * kd * nv // nk + vd) * 4 + 4 * nv * 64 * 6 + 2 * vd * 4
    return proj + conv + fallback


def dense_mlp_bytes(s: ModelSpec, kernels: str) -> int:
    """SwiGLU MLP: input 2h, gate and up outputs 2I each, SiLU output 2I, product 2I = 2h + 8I."""
    return 2 * s.hidden_size + 8 * s.intermediate_size


def moe_bytes(s: ModelSpec, kernels: str) -> int:
    """MoE block (grouped_mm): input 2h, router probs fp32 4E, per routed slot k*(4h + 8Im)
    (permuted copy 2h, gate_up 4Im, act 2Im, product 2Im, down output 2h), + Qwen3-Next shared
    expert 8Is + 2h and its gate, + ~400 B of routing indices."""
    h, E, k, Im = s.hidden_size, s.num_experts, s.experts_per_token, s.moe_intermediate_size
    n = 2 * h + 4 * E + k * (4 * h + 8 * Im) + 400
    if s.family == "qwen3_next":
        n += 8 * s.shared_expert_intermediate_size + 2 * h + 4
    return n


def layer_bytes(s: ModelSpec, i: int, kernels: str) -> tuple[int, int]:
    """(replicated bytes, TP-splittable bytes) per token of decoder layer i."""
    if s.layer_types[i] == LINEAR_ATTENTION:
        mixer = gated_deltanet_bytes(s, kernels)
    elif s.family == "qwen3_next":
        mixer = gated_attention_bytes(s, kernels)
    else:
        mixer = attention_bytes(s, kernels)
    mlp = moe_bytes(s, kernels) if s.mlp_types[i] == MOE else dense_mlp_bytes(s, kernels)
    return 2 * norm_bytes(s, kernels), mixer + mlp


def _scale(plan: Plan) -> int:
    return 2 if plan.precision == "fp32" else 1


def activation_terms(s: ModelSpec, lay: Layout, plan: Plan, seq_len: int) -> list[Term]:
    """Per GPU at the activation peak (start of backward) for one micro-batch (x in-flight
    micro-batches on the first pipeline stage under 1F1B)."""
    tokens = plan.micro_batch * seq_len
    in_flight = min(lay.pp, plan.grad_accum) if lay.pp > 1 else 1
    scale = _scale(plan)
    per_layer = []
    for i in lay.stage_layers:
        rep, split = layer_bytes(s, i, plan.kernels)
        per_layer.append(rep + -(-split // lay.tp))
    if plan.checkpointing:
        kept = 2 * s.hidden_size * len(per_layer) * tokens * in_flight * scale
        recompute = max(per_layer) * tokens * scale
        return [
            Term("activations_checkpoints", kept, "fwd_bwd", f"2h x {len(per_layer)} layers x {tokens:,} tokens x {in_flight} in flight"),
            Term("activations_recompute", recompute, "fwd_bwd", f"one layer {max(per_layer):,} B/token x {tokens:,} tokens"),
        ]
    total = sum(per_layer) * tokens * in_flight * scale
    return [Term("activations", total, "fwd_bwd", f"{sum(per_layer):,} B/token over {len(per_layer)} layers x {tokens:,} tokens x {in_flight} in flight")]


def loss_terms(s: ModelSpec, lay: Layout, plan: Plan, seq_len: int) -> list[Term]:
    """Logits and cross-entropy on the last stage.
    HF path (forward with labels): bf16 logits 2V + fp32 log-softmax saved 4V per token, plus
    during loss backward the fp32 grads of log-softmax output and input (8V, calibration.json).
    Chunked path (built-in runtime): logits never materialised for the whole sequence; one chunk
    of C tokens at a time is alive, with its fp32 softmax and grads: 14V per chunk token."""
    if not lay.last_stage:
        return []
    V, tokens = s.vocab_size, plan.micro_batch * seq_len
    bwd = int(constant("loss_backward_transient_per_vocab"))
    final_norm = Term("final_norm", norm_bytes(s, plan.kernels) * tokens, "fwd_bwd", f"{norm_bytes(s, plan.kernels)} B x {tokens:,} tokens")
    if plan.loss == "chunked":
        c = min(tokens, int(constant("loss_chunk_tokens")))
        return [final_norm, Term("loss_chunk", (6 + bwd) * V * c, "fwd_bwd", f"{6 + bwd}V x {c:,} chunk tokens, V={V:,}")]
    return [
        final_norm,
        Term("logits_and_logsoftmax", 6 * V * tokens, "fwd_bwd", f"(2+4)V x {tokens:,} tokens, V={V:,}"),
        Term("loss_backward", bwd * V * tokens, "fwd_bwd", f"{bwd}V x {tokens:,} tokens"),
    ]
