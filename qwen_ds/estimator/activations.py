"""Training activation memory: bytes saved for backward, per token, per layer sub-block.

Two kernel sets:
- ``hf``: transformers' modules as they run by default (sdpa attention, RMSNorm in fp32, the torch
  fallback of Gated DeltaNet, grouped_mm MoE). Exact formulas fitted to saved-tensor
  measurements (torch.autograd.graph.saved_tensors_hooks) over 7-9 configs per family, residual
  0 B on CPU and on H200 (benchmarks/activation_probe.py,
  benchmarks/results/activation_saved_tensors_cpu_2026-11-28.md); peak memory of real steps
  within 0.3 % median (benchmarks/results/activation_gpu_h200_2026-11-28.md).
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
from ..models.counts import LayerKind, kind_counts
from ..models.spec import LINEAR_ATTENTION, MOE, ModelSpec
from ..knobs import Plan
from ..units import compute_bytes
from .breakdown import Term
from .layout import Layout


GDN_CHUNK = 64  # chunk size of the Gated DeltaNet chunked kernels (torch fallback and FLA)


def norm_bytes(s: ModelSpec, kernels: str) -> int:
    """One RMSNorm. HF: 6h+4 (fp32 upcast input, rstd, ...); Qwen3-Next's zero-centred (1+w) norm
    computes in fp32: 8h+4. Fused: input 2h + rstd 4."""
    h = s.hidden_size
    if kernels == "fused":
        return 2 * h + 4
    return (8 if s.family == "qwen3_next" else 6) * h + 4


def attention_bytes(s: ModelSpec, kernels: str) -> int:
    """Dense GQA attention under sdpa (no mask, enable_gqa; flash / cuDNN on GPU save the same):
    Qwen3 / Qwen3-MoE with q/k RMSNorm: 2h + 10q + 10kv + 8nH + 4nKV; Qwen2 / Llama (biases add
    nothing): 2h + 4q + 4kv + 4nH (input, q/k after RoPE, v, output = o_proj input, fp32 logsumexp)."""
    h, q, kv, nh, nkv = s.hidden_size, s.q_dim, s.kv_dim, s.num_heads, s.num_kv_heads
    if kernels == "fused" or s.family not in ("qwen3", "qwen3_moe"):
        return 2 * h + 4 * q + 4 * kv + 4 * nh
    return 2 * h + 10 * q + 10 * kv + 8 * nh + 4 * nkv


def gated_attention_bytes(s: ModelSpec, kernels: str) -> int:
    """Qwen3-Next gated attention (query + sigmoid gate from one q_proj, q/k norms, partial RoPE):
    HF 2h + 18q + 12kv + 8nH + 4nKV. Fused: dense flash attention plus gate, sigmoid, gated output."""
    h, q, kv, nh, nkv = s.hidden_size, s.q_dim, s.kv_dim, s.num_heads, s.num_kv_heads
    if kernels == "fused":
        return 2 * h + 10 * q + 4 * kv + 4 * nh
    return 2 * h + 18 * q + 12 * kv + 8 * nh + 4 * nkv


def gated_deltanet_bytes(s: ModelSpec, kernels: str) -> int:
    """Qwen3-Next Gated DeltaNet. HF torch fallback (chunk C = 64, s a multiple of C):
    2h + 8kd + 34vd + 32·nv·dk + 38nv + 20·C·nv + 4·nv·dk·dv/C + 4nv/C (five fp32 CxC matrices
    per chunk and one fp32 state per chunk). Fused (FLA chunk kernel, states recomputed in
    backward): projections, conv, q/k/v + rstds, g, beta, A[64 per head] - an estimate until the
    FLA path is measured (#7)."""
    h, C = s.hidden_size, GDN_CHUNK
    nk, nv, dk, dv = s.linear_num_key_heads, s.linear_num_value_heads, s.linear_key_head_dim, s.linear_value_head_dim
    kd, vd = nk * dk, nv * dv
    if kernels == "fused":
        proj = 2 * h + 2 * (2 * kd + 2 * vd) + 4 * nv
        conv = 4 * (2 * kd + vd)
        return proj + conv + 4 * kd + 2 * vd + 8 * nv + 4 * nv * C + 6 * vd
    return 2 * h + 8 * kd + 34 * vd + 32 * nv * dk + 38 * nv + 20 * C * nv + (4 * nv * dk * dv + 4 * nv) // C


def dense_mlp_bytes(s: ModelSpec, kernels: str) -> int:
    """SwiGLU MLP: input 2h, gate and up outputs 2I each, SiLU output 2I, product 2I = 2h + 8I."""
    return 2 * s.hidden_size + 8 * s.intermediate_size


def moe_bytes(s: ModelSpec, kernels: str) -> int:
    """MoE block, transformers' default grouped_mm experts: per routed slot 4h + 8Im + 38 (permuted
    copy, gate_up, activation, product, down output, indices), router 4E + 12k + 4 (fp32 probs).
    Qwen3-MoE: 2h + k(4h+8Im+38) + 4E + 4. Qwen3-Next adds the shared expert 2h + 8Is and its gate
    multiply 2h + 2: 4h + k(4h+8Im+38) + 4E + 8Is + 6."""
    h, E, k, Im = s.hidden_size, s.num_experts, s.experts_per_token, s.moe_intermediate_size
    n = 2 * h + k * (4 * h + 8 * Im + 38) + 4 * E + 4
    if s.family == "qwen3_next":
        n += 2 * h + 8 * s.shared_expert_intermediate_size + 2
    return n


def head_bytes(s: ModelSpec, kernels: str) -> int:
    """Model-level per token: final norm + lm_head input 2h + int64 input ids 8 + labels 8."""
    return norm_bytes(s, kernels) + 2 * s.hidden_size + 16


def layer_bytes(s: ModelSpec, kind: LayerKind, kernels: str) -> tuple[int, int]:
    """(replicated bytes, TP-splittable bytes) per token of a decoder layer of this (mixer, mlp) kind."""
    mixer_type, mlp_type = kind
    if mixer_type == LINEAR_ATTENTION:
        mixer = gated_deltanet_bytes(s, kernels)
    elif s.family == "qwen3_next":
        mixer = gated_attention_bytes(s, kernels)
    else:
        mixer = attention_bytes(s, kernels)
    mlp = moe_bytes(s, kernels) if mlp_type == MOE else dense_mlp_bytes(s, kernels)
    return 2 * norm_bytes(s, kernels), mixer + mlp


def lora_targeted_linears(s: ModelSpec, targets: str, kinds: dict) -> int:
    """Adapted units (targeted nn.Linear modules, mapped expert / router tensors) over the layers of ``kinds``."""
    from ..models.finetune import lora_shapes

    return sum(n * len(lora_shapes(s, targets, kind)) for kind, n in kinds.items())


def activation_terms(s: ModelSpec, lay: Layout, plan: Plan, seq_len: int) -> list[Term]:
    """Per GPU at the activation peak (start of backward) for one micro-batch (x the micro-batches in
    flight on the layout's pipeline stage: p - s on stage s under 1F1B, at most grad_accum)."""
    tokens = plan.micro_batch * seq_len
    in_flight = min(lay.pp - lay.stage, plan.grad_accum) if lay.pp > 1 else 1
    scale = compute_bytes(plan.precision) // 2  # layer_bytes counts 16-bit activations
    # per layer kind, times how many layers of the stage have it: no work per layer; freeze of the last N layers:
    # no gradient reaches the layers before them, so autograd saves nothing there
    layers = lay.stage_layers
    if plan.finetune == "freeze" and plan.freeze_layers > 0:
        layers = range(max(layers.start, s.num_layers - plan.freeze_layers), layers.stop)
        if not len(layers):
            return []
    kinds = kind_counts(s, layers)
    per_kind = {}
    for kind in kinds:
        rep, split = layer_bytes(s, kind, plan.kernels)
        per_kind[kind] = rep + -(-split // lay.tp)
    n_layers = sum(kinds.values())
    if plan.checkpointing:
        kept = 2 * s.hidden_size * n_layers * tokens * in_flight * scale
        largest = max(per_kind.values())
        return [
            Term("activations_checkpoints", kept, "fwd_bwd",
                 f"2h x {n_layers} layers x {tokens:,} tokens x {in_flight} in flight"),
            Term("activations_recompute", largest * tokens * scale, "recompute",
                 f"one layer {largest:,} B/token x {tokens:,} tokens"),
        ]
    per_token = sum(n * per_kind[kind] for kind, n in kinds.items())
    total = per_token * tokens * in_flight * scale
    out = [Term("activations", total, "fwd_bwd",
                f"{per_token:,} B/token over {n_layers} layers x {tokens:,} tokens x {in_flight} in flight")]
    if plan.finetune in ("lora", "qlora"):  # x @ A (rank r) saved for B's gradient, per targeted Linear
        targets = lora_targeted_linears(s, plan.lora_targets, kinds)
        lora = 2 * scale * plan.lora_rank * targets * tokens * in_flight
        out.append(Term("lora_intermediates", lora, "fwd_bwd",
                        f"r {plan.lora_rank} x {targets} targeted Linear layers x {tokens:,} tokens x {2 * scale} B"))
    return out


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
    hb = head_bytes(s, plan.kernels)
    final_norm = Term("final_norm_and_head", hb * tokens, "fwd_bwd",
                      f"{hb:,} B/token (norm, lm_head input, ids, labels) x {tokens:,} tokens")
    if plan.loss == "chunked":
        c = min(tokens, int(constant("loss_chunk_tokens")))
        return [final_norm, Term("loss_chunk", (6 + bwd) * V * c, "loss", f"{6 + bwd}V x {c:,} chunk tokens, V={V:,}")]
    return [
        final_norm,
        Term("logits_and_logsoftmax", 6 * V * tokens, "loss", f"(2+4)V x {tokens:,} tokens, V={V:,}"),
        Term("loss_backward", bwd * V * tokens, "loss", f"{bwd}V x {tokens:,} tokens"),
    ]
