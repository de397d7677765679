"""Inference memory: weights, KV cache on full-attention layers only, fixed Gated-DeltaNet state.

KV: 2 (K,V) * nKV * hd * n_full_layers * dtype bytes per token (reference/qwen-models.md §3);
under TP the KV heads split (replicated when tp > nKV). GDN state per sequence per linear layer
(transformers cache): conv (2kd+vd)*Kc in the model dtype + recurrent nv*dk*dv in fp32.
ZeRO-Inference (ZeRO-3 with offload_param) streams weights: the GPU holds the gathered unit and
the prefetch window.
"""

from __future__ import annotations

from ..models.counts import count_params
from ..models.spec import ModelSpec
from ..knobs import Plan
from ..sharding import largest_gathered
from ..units import bytes_per_element, compute_bytes
from .breakdown import Term
from .layout import Layout


def kv_bytes_per_token(s: ModelSpec, plan: Plan, tp: int) -> int:
    dtype = compute_bytes(plan.precision)
    heads = -(-s.num_kv_heads // tp)
    return 2 * heads * s.head_dim * s.n_full_attention_layers * dtype


def gdn_state_bytes_per_sequence(s: ModelSpec, plan: Plan, tp: int) -> int:
    if not s.n_linear_attention_layers:
        return 0
    dtype = compute_bytes(plan.precision)
    kd = s.linear_num_key_heads * s.linear_key_head_dim
    vd = s.linear_num_value_heads * s.linear_value_head_dim
    conv = (2 * kd + vd) * s.linear_conv_kernel * dtype
    recurrent = s.linear_num_value_heads * s.linear_key_head_dim * s.linear_value_head_dim * 4
    return -(-(conv + recurrent) // tp) * s.n_linear_attention_layers


def weight_term(s: ModelSpec, lay: Layout, plan: Plan, world: int) -> Term:
    b = bytes_per_element(plan.precision)
    counts = count_params(s)
    if plan.zero_stage == 3 and plan.offload_param != "none":
        largest = largest_gathered(s)[0]
        pf = plan.buckets(s.hidden_size)["prefetch_bucket_size"]
        return Term("weights_live", b * (largest + pf), "persistent",
                    f"{b} B x ({largest:,} largest + {pf:,} prefetch), rest on {plan.offload_param}")
    if plan.zero_stage == 3:
        n = -(-counts.total // world)
        largest = largest_gathered(s)[0]
        return Term("weights", b * (n + largest), "persistent",
                    f"{b} B x ({counts.total:,} / {world} + {largest:,} gathered)")
    how = f" ({lay.whole_params:,} kept whole by AutoTP, the rest / tp {lay.tp})" if lay.tp > 1 else ""
    return Term("weights", b * lay.params_per_mp_rank, "persistent", f"{b} B x {lay.params_per_mp_rank:,}{how}")


def inference_terms(s: ModelSpec, lay: Layout, plan: Plan, seq_len: int, new_tokens: int, world: int) -> list[Term]:
    batch, ctx = plan.micro_batch, seq_len + new_tokens
    kv = kv_bytes_per_token(s, plan, lay.tp)
    gdn = gdn_state_bytes_per_sequence(s, plan, lay.tp)
    act_dtype = compute_bytes(plan.precision)
    h = s.hidden_size
    inter = max(s.intermediate_size if "dense" in s.mlp_types else 0,
                s.experts_per_token * s.moe_intermediate_size + s.shared_expert_intermediate_size
                if s.n_moe_layers else 0)
    # prefill: one layer's transients alive at a time (residual, MLP gate/up/act) + last-token logits
    # AutoTP splits dense MLPs over the TP ranks; routed experts stay whole, so every rank runs them all
    mlp_tp = 1 if s.n_moe_layers else lay.tp
    prefill = batch * seq_len * act_dtype * (3 * h + -(-3 * inter // mlp_tp))
    logits = batch * s.vocab_size * 4
    return [
        weight_term(s, lay, plan, world),
        Term("kv_cache", kv * batch * ctx, "persistent", f"{kv:,} B/token x {batch} seq x {ctx:,} tokens"),
        Term("gdn_state", gdn * batch, "persistent", f"{gdn:,} B/seq x {batch} seq"),
        Term("prefill_activations", prefill, "fwd_bwd",
             f"{act_dtype} B x {batch * seq_len:,} tokens x (3h + 3I/{mlp_tp}), I={inter:,}"),
        Term("logits", logits, "fwd_bwd", f"fp32 last-token logits {batch} x V {s.vocab_size:,}"),
    ]


def cpu_terms(s: ModelSpec, plan: Plan, nodes: int) -> list[Term]:
    if plan.zero_stage == 3 and plan.offload_param == "cpu":
        b = bytes_per_element(plan.precision)
        n = count_params(s).total
        return [Term("cpu_weights", -(-b * n // nodes), "persistent", f"{b} B x {n:,} / {nodes} nodes")]
    return []
