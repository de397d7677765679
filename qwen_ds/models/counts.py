"""Closed-form parameter counts per family and the training FLOPs per token (no torch).

Every layer is listed as its parameter tensors (module path, numel); totals and per-layer splits
derive from that one list, and so do the DeepSpeed / FP8 rules over it (qwen_ds.sharding: what AutoTP
splits, what ZeRO-3 gathers and keeps persistent, what FP8 converts). Formulas:
../shared/reference/qwen-models.md §1-2, each checked against the meta-device model of transformers
(tests/test_counts.py repeats the check for every preset and for random small configs).
Notation: V vocab, h hidden, q = nH*hd, kv = nKV*hd, I intermediate, E experts, k top-k,
Im moe_intermediate, Is shared_expert_intermediate, kd = nk*dk, vd = nv*dv, Kc conv kernel.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

from .spec import LINEAR_ATTENTION, MOE, ModelSpec

# (module, numel) of one parameter tensor; module is the path below the layer, e.g. "mlp.experts"
Tensor = tuple[str, int]


def attention_tensors(s: ModelSpec) -> list[Tensor]:
    """Dense / GQA attention: q h*q, k and v h*kv, o q*h; Qwen3 q/k RMSNorm hd each;
    biases: Qwen2 always on q/k/v (not o), Llama/Qwen3 with attention_bias on q/k/v/o."""
    h, q, kv, hd = s.hidden_size, s.q_dim, s.kv_dim, s.head_dim
    t = [("self_attn.q_proj", h * q), ("self_attn.k_proj", h * kv), ("self_attn.v_proj", h * kv),
         ("self_attn.o_proj", q * h)]
    if s.family == "qwen2" or s.attention_bias:
        t += [("self_attn.q_proj", q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)]
    if s.family != "qwen2" and s.attention_bias:
        t.append(("self_attn.o_proj", h))
    if s.family in ("qwen3", "qwen3_moe"):
        t += [("self_attn.q_norm", hd), ("self_attn.k_norm", hd)]
    return t


def gated_attention_tensors(s: ModelSpec) -> list[Tensor]:
    """Qwen3-Next full attention: q_proj emits query and sigmoid gate (h*2q), k/v h*kv, o q*h, q/k norms hd."""
    h, q, kv, hd = s.hidden_size, s.q_dim, s.kv_dim, s.head_dim
    t = [("self_attn.q_proj", h * 2 * q), ("self_attn.k_proj", h * kv), ("self_attn.v_proj", h * kv),
         ("self_attn.o_proj", q * h)]
    if s.attention_bias:
        t += [("self_attn.q_proj", 2 * q), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv), ("self_attn.o_proj", h)]
    return t + [("self_attn.q_norm", hd), ("self_attn.k_norm", hd)]


def gated_deltanet_tensors(s: ModelSpec) -> list[Tensor]:
    """Qwen3-Next linear attention (Gated DeltaNet): depthwise conv1d (2kd+vd)*Kc, in_proj_qkvz h(2kd+2vd),
    in_proj_ba h*2nv, dt_bias nv, A_log nv, gated RMSNorm dv, out_proj vd*h."""
    h, nv = s.hidden_size, s.linear_num_value_heads
    kd = s.linear_num_key_heads * s.linear_key_head_dim
    vd = nv * s.linear_value_head_dim
    return [
        ("linear_attn.conv1d", (2 * kd + vd) * s.linear_conv_kernel),
        ("linear_attn.in_proj_qkvz", h * (2 * kd + 2 * vd)),
        ("linear_attn.in_proj_ba", h * 2 * nv),
        ("linear_attn.dt_bias", nv),
        ("linear_attn.A_log", nv),
        ("linear_attn.norm", s.linear_value_head_dim),
        ("linear_attn.out_proj", vd * h),
    ]


def dense_mlp_tensors(s: ModelSpec) -> list[Tensor]:
    """SwiGLU MLP: gate, up h*I, down I*h (+ I, I, h biases for Llama mlp_bias)."""
    h, inter = s.hidden_size, s.intermediate_size
    t = [("mlp.gate_proj", h * inter), ("mlp.up_proj", h * inter), ("mlp.down_proj", inter * h)]
    if s.family == "llama" and s.mlp_bias:
        t += [("mlp.gate_proj", inter), ("mlp.up_proj", inter), ("mlp.down_proj", h)]
    return t


def moe_tensors(s: ModelSpec) -> list[Tensor]:
    """Router E*h; routed experts fused as gate_up [E,2Im,h] and down [E,h,Im] (3*E*Im*h);
    Qwen3-Next adds a shared SwiGLU expert 3h*Is and its sigmoid gate h."""
    h, E, Im = s.hidden_size, s.num_experts, s.moe_intermediate_size
    t = [("mlp.gate", E * h), ("mlp.experts", 2 * E * Im * h), ("mlp.experts", E * h * Im)]
    if s.family == "qwen3_next":
        Is = s.shared_expert_intermediate_size
        t += [
            ("mlp.shared_expert.gate_proj", h * Is),
            ("mlp.shared_expert.up_proj", h * Is),
            ("mlp.shared_expert.down_proj", Is * h),
            ("mlp.shared_expert_gate", h),
        ]
    return t


def moe_inactive_params(s: ModelSpec) -> int:
    """Routed-expert parameters one token does not touch in one MoE layer: 3*(E-k)*Im*h."""
    return 3 * (s.num_experts - s.experts_per_token) * s.moe_intermediate_size * s.hidden_size


#: (mixer type, mlp type) of a decoder layer: its parameter tensors depend on nothing else, so every
#: sum over layers is a sum over the few kinds times how many layers have each (no per-layer work)
LayerKind = tuple[str, str]


def kind_counts(s: ModelSpec, layers: Iterable[int] | None = None) -> dict[LayerKind, int]:
    """How many of ``layers`` (all decoder layers by default) have each kind, in order of first appearance."""
    if layers is None:
        return dict(s.layer_kinds)
    if isinstance(layers, range) and layers.step == 1:  # a pipeline stage: bisect, no per-layer work
        found = ((kind, bisect_left(pos, layers.stop) - bisect_left(pos, layers.start))
                 for kind, pos in s.kind_positions.items())
        return {kind: n for kind, n in found if n}
    idx = tuple(layers)
    return dict(Counter(zip(map(s.layer_types.__getitem__, idx), map(s.mlp_types.__getitem__, idx))))


def kind_tensors(s: ModelSpec, kind: LayerKind) -> tuple[Tensor, ...]:
    """Parameter tensors of a decoder layer of this kind (module path relative to the layer)."""
    mixer_type, mlp_type = kind
    if mixer_type == LINEAR_ATTENTION:
        mixer = gated_deltanet_tensors(s)
    elif s.family == "qwen3_next":
        mixer = gated_attention_tensors(s)
    else:
        mixer = attention_tensors(s)
    mlp = moe_tensors(s) if mlp_type == MOE else dense_mlp_tensors(s)
    norms = [("input_layernorm", s.hidden_size), ("post_attention_layernorm", s.hidden_size)]
    return tuple(mixer + mlp + norms)


def layer_tensors(s: ModelSpec, i: int) -> tuple[Tensor, ...]:
    """Parameter tensors of decoder layer ``i``."""
    return kind_tensors(s, (s.layer_types[i], s.mlp_types[i]))


def sum_tensors(s: ModelSpec, keep: Callable[[str, int], bool], layers: Iterable[int] | None = None) -> int:
    """Elements of the tensors ``keep(module, numel)`` selects, over ``layers`` (all by default)."""
    return sum(count * sum(n for module, n in kind_tensors(s, kind) if keep(module, n))
               for kind, count in kind_counts(s, layers).items())


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one decoder layer, split by sub-block."""

    mixer_type: str  # full_attention | linear_attention
    mlp_type: str  # dense | moe
    mixer: int
    mlp: int
    mlp_active: int
    norms: int

    @property
    def total(self) -> int:
        return self.mixer + self.mlp + self.norms

    @property
    def active(self) -> int:
        return self.mixer + self.mlp_active + self.norms


@dataclass(frozen=True)
class ParamCounts:
    total: int
    active: int
    embedding: int
    lm_head: int
    final_norm: int
    layers: tuple[LayerParams, ...]

    @property
    def non_embedding(self) -> int:
        """Total without input embedding and lm_head (the 'non-embedding' of the Qwen model cards)."""
        return self.total - self.embedding - self.lm_head

    @property
    def active_non_embedding(self) -> int:
        return self.active - self.embedding - self.lm_head

    def by_kind(self) -> dict[str, int]:
        """Parameters summed per sub-block kind, e.g. {'linear_attention': .., 'moe': .., 'norms': ..}."""
        out: dict[str, int] = {}
        for lp in self.layers:
            out[lp.mixer_type] = out.get(lp.mixer_type, 0) + lp.mixer
            out[lp.mlp_type] = out.get(lp.mlp_type, 0) + lp.mlp
            out["norms"] = out.get("norms", 0) + lp.norms
        return out


def _kind_params(s: ModelSpec, kind: LayerKind) -> LayerParams:
    mixer = mlp = norms = 0
    for module, n in kind_tensors(s, kind):
        if module.startswith(("self_attn", "linear_attn")):
            mixer += n
        elif module.startswith("mlp"):
            mlp += n
        else:
            norms += n
    active = mlp - moe_inactive_params(s) if kind[1] == MOE else mlp
    return LayerParams(kind[0], kind[1], mixer, mlp, active, norms)


def layers_params(s: ModelSpec, layers: Iterable[int] | None = None) -> int:
    """Parameters of these decoder layers (all by default)."""
    return sum_tensors(s, lambda module, n: True, layers)


@lru_cache(maxsize=256)
def count_params(s: ModelSpec) -> ParamCounts:
    """All counts of a closed-form family; for other families the meta-device total is used."""
    V, h = s.vocab_size, s.hidden_size
    embedding = V * h
    lm_head = 0 if s.tie_embeddings else V * h
    if not s.closed_form:
        total = s.measured_total_params or 0
        return ParamCounts(total, total, embedding, lm_head, h, ())
    per_kind = kind_counts(s)
    kinds = {kind: _kind_params(s, kind) for kind in per_kind}
    # one shared LayerParams per kind: the per-layer tuple holds references, the sums are closed form
    layers = tuple(kinds[kind] for kind in zip(s.layer_types, s.mlp_types))
    total = embedding + lm_head + h + sum(n * kinds[kind].total for kind, n in per_kind.items())
    active = embedding + lm_head + h + sum(n * kinds[kind].active for kind, n in per_kind.items())
    return ParamCounts(total, active, embedding, lm_head, h, layers)


def model_flops_per_token(model: ModelSpec, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active matmul params (embedding lookup excluded, the head
    included, tied or not) + causal attention scores 6 x 2 x s/2 x q per full-attention layer (fwd 2 matmuls
    of 2·s·q FLOPs each, halved by the causal mask; backward twice the forward). Gated DeltaNet
    layers are linear in s and counted through their parameters only."""
    c = count_params(model)
    # the head matmul (V x h) runs whether or not its weight is tied to the embedding
    matmul = c.active - c.embedding - c.lm_head + model.vocab_size * model.hidden_size
    n_full = model.n_full_attention_layers
    attention = 6 * 2 * (seq_len / 2) * model.q_dim * n_full
    return 6 * matmul + attention
