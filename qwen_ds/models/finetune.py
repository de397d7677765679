"""Trainable parameters of a fine-tuning method in closed form (no torch): full, LoRA / QLoRA, freeze.

LoRA follows what peft (0.21) does on transformers 5 models, checked against ``peft.get_peft_model`` on the meta
device (tests/test_finetune.py):

- Each targeted ``nn.Linear`` (in -> out) gains A (r x in) and B (out x r): r * (in + out) parameters; biases stay
  frozen (peft's default ``bias="none"``); the output head is never a target of ``all-linear``.
- ``all-linear`` targets every ``nn.Linear`` but the head. On Qwen3-MoE and Qwen3-Next (transformers 5 fuses the
  routed experts into 3-D parameters) peft maps the transformers-4 names onto parameters: ``gate`` to the router
  weight [E, h] (r * (h + E)), ``gate_proj`` + ``up_proj`` to the fused ``experts.gate_up_proj`` [E, 2Im, h] at rank
  2r (r_e * E * (h + 2Im)), ``down_proj`` to ``experts.down_proj`` [E, h, Im] (r * E * (Im + h)). Those names then
  leave the module targets, so the ``nn.Linear`` layers called gate_proj / up_proj / down_proj elsewhere in the model
  (Qwen3-Next's shared expert, the dense layers of ``mlp_only_layers``) are *not* adapted. Routed experts are
  therefore targeted by ``all-linear``, and so is the router.
- A list of names targets the modules whose name ends with one of them; on the MoE families the four names above are
  mapped the same way (``gate_proj`` needs ``up_proj``: they are one fused tensor).

Freeze (LLaMA-Factory's ``finetuning_type: freeze``): the last N decoder layers train (the first |N| when N < 0),
all of each layer's parameters or only the sub-modules named (``mlp``, ``self_attn``, ``linear_attn``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from .counts import count_params, kind_counts, kind_tensors, sum_tensors
from .spec import LINEAR_ATTENTION, MOE, ModelSpec

FINETUNE_METHODS = ("full", "lora", "qlora", "freeze")
ALL_LINEAR = "all-linear"
#: model_type -> peft's transformers-5 conversion of MoE targets (peft utils/transformers_weight_conversion.py)
MOE_FAMILIES = ("qwen3_moe", "qwen3_next")
MOE_MAPPED = ("gate", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Linear:
    path: str  # below the decoder layer, e.g. "self_attn.q_proj"
    fan_in: int
    fan_out: int

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]


def layer_linears(s: ModelSpec, mixer_type: str, mlp_type: str) -> list[Linear]:
    """The ``nn.Linear`` modules of a decoder layer of this kind (transformers 5 module names)."""
    h = s.hidden_size
    out: list[Linear] = []
    if mixer_type == LINEAR_ATTENTION:
        nv = s.linear_num_value_heads
        kd = s.linear_num_key_heads * s.linear_key_head_dim
        vd = nv * s.linear_value_head_dim
        out += [Linear("linear_attn.in_proj_qkvz", h, 2 * kd + 2 * vd), Linear("linear_attn.in_proj_ba", h, 2 * nv),
                Linear("linear_attn.out_proj", vd, h)]
    else:
        q = 2 * s.q_dim if s.family == "qwen3_next" else s.q_dim  # Qwen3-Next's q_proj also emits the output gate
        out += [Linear("self_attn.q_proj", h, q), Linear("self_attn.k_proj", h, s.kv_dim),
                Linear("self_attn.v_proj", h, s.kv_dim), Linear("self_attn.o_proj", s.q_dim, h)]
    if mlp_type == MOE:
        if s.family == "qwen3_next":
            Is = s.shared_expert_intermediate_size
            out += [Linear("mlp.shared_expert.gate_proj", h, Is), Linear("mlp.shared_expert.up_proj", h, Is),
                    Linear("mlp.shared_expert.down_proj", Is, h), Linear("mlp.shared_expert_gate", h, 1)]
    else:
        inter = s.intermediate_size
        out += [Linear("mlp.gate_proj", h, inter), Linear("mlp.up_proj", h, inter), Linear("mlp.down_proj", inter, h)]
    return out


def target_names(s: ModelSpec) -> tuple[str, ...]:
    """The names --lora-targets accepts for this model: its Linear modules' names (and on the MoE families the
    expert / router names peft maps onto parameters)."""
    names = {lin.name for kind in kind_counts(s) for lin in layer_linears(s, *kind)}
    if s.family in MOE_FAMILIES and s.n_moe_layers:
        names |= set(MOE_MAPPED)
    return tuple(sorted(names))


def parse_targets(s: ModelSpec, targets: str) -> frozenset[str]:
    """--lora-targets: ``all-linear`` or a comma-separated list of module names; InputError on a name the model
    does not have, or on gate_proj without up_proj (and back) where they are one fused expert tensor."""
    allowed = target_names(s)
    text = targets.strip()
    if text.lower() == ALL_LINEAR:
        chosen = set(allowed)
        if s.family in MOE_FAMILIES and s.n_moe_layers:
            chosen |= set(MOE_MAPPED)
        return frozenset(chosen)
    chosen = {t.strip() for t in text.split(",") if t.strip()}
    bad = sorted(chosen - set(allowed))
    if not chosen or bad:
        raise InputError(f"--lora-targets {targets!r}: {', '.join(bad) or 'no names'} not in {s.name}'s Linear layers; "
                         f"choose {ALL_LINEAR} or from: {', '.join(allowed)}")
    if s.family in MOE_FAMILIES and s.n_moe_layers and len(chosen & {"gate_proj", "up_proj"}) == 1:
        raise InputError(f"--lora-targets {targets!r}: gate_proj and up_proj are one fused expert tensor "
                         f"(experts.gate_up_proj) in {s.name}; target both or neither")
    return frozenset(chosen)


def lora_shapes(s: ModelSpec, targets: str, kind: tuple[str, str]) -> list[tuple[str, int, int, int]]:
    """The adapted units of one decoder layer of ``kind`` under ``targets``, as (module path below the layer, fan_in,
    fan_out, m): peft gives each A [m r, fan_in] and B [fan_out, m r]. m is 1 for a targeted nn.Linear and for the
    MoE router [E, h] (h -> E); the fused experts.gate_up_proj [E, 2Im, h] is adapted at rank 2r over the E experts
    (h -> 2Im, m = 2E) and experts.down_proj [E, h, Im] at rank r (Im -> h, m = E)."""
    chosen = parse_targets(s, targets)
    moe_map = s.family in MOE_FAMILIES and s.n_moe_layers > 0
    module_targets = chosen - set(MOE_MAPPED) if moe_map else chosen
    shapes = [(lin.path, lin.fan_in, lin.fan_out, 1) for lin in layer_linears(s, *kind) if lin.name in module_targets]
    if moe_map and kind[1] == MOE:
        h, E, Im = s.hidden_size, s.num_experts, s.moe_intermediate_size
        if "gate" in chosen:
            shapes.append(("mlp.gate", h, E, 1))
        if "gate_proj" in chosen:
            shapes.append(("mlp.experts.gate_up_proj", h, 2 * Im, 2 * E))
        if "down_proj" in chosen:
            shapes.append(("mlp.experts.down_proj", Im, h, E))
    return shapes


def lora_tensors(s: ModelSpec, targets: str, rank: int, kind: tuple[str, str]) -> list[tuple[str, int]]:
    """(module path, elements) of each adapter tensor (A, then B, per unit) peft adds to one decoder layer of
    ``kind``."""
    return [(path, n) for path, i, o, m in lora_shapes(s, targets, kind) for n in (m * rank * i, o * m * rank)]


def lora_params(s: ModelSpec, targets: str, rank: int) -> int:
    """Adapter parameters peft adds with ``target_modules=targets`` and ``r=rank``."""
    return sum(count * sum(n for _, n in lora_tensors(s, targets, rank, kind))
               for kind, count in kind_counts(s).items())


def linear_weights(s: ModelSpec) -> int:
    """Weights of the decoder layers' ``nn.Linear`` modules: what bitsandbytes stores in 4 bits under QLoRA
    (transformers replaces nn.Linear only: the embedding, norms, head, router and the fused routed experts of the
    MoE families stay 16-bit)."""
    return sum(count * sum(lin.fan_in * lin.fan_out for lin in layer_linears(s, *kind))
               for kind, count in kind_counts(s).items())


def freeze_selection(s: ModelSpec, layers: int, modules: str = "all") -> tuple[range, Callable[[str, int], bool]]:
    """The decoder layers that train under freeze (the last ``layers``, the first -layers when negative) and the
    test a layer tensor (module path, numel) passes to train: all, or those below the named sub-modules
    (comma-separated, e.g. ``mlp,self_attn``)."""
    n = s.num_layers
    if layers == 0 or abs(layers) > n:
        raise InputError(f"--freeze-layers {layers}: choose 1..{n} (the last N layers train) or -{n}..-1 (the first N)")
    idx = range(n - layers, n) if layers > 0 else range(0, -layers)
    wanted = [m.strip() for m in modules.split(",") if m.strip()]
    if not wanted:
        raise InputError(f"--trainable-modules {modules!r}: name sub-modules (mlp, self_attn, ...) or all")
    every = "all" in wanted
    known = {path.split(".", 1)[0] for kind in kind_counts(s) for path, _ in kind_tensors(s, kind)}
    bad = sorted(set(wanted) - known - {"all"})
    if bad:
        raise InputError(f"--trainable-modules {modules!r}: {', '.join(bad)} not in {s.name}'s layers; "
                         f"choose all or from: {', '.join(sorted(known))}")
    return idx, lambda path, numel: every or path.split(".", 1)[0] in wanted


def freeze_params(s: ModelSpec, layers: int, modules: str = "all") -> int:
    """Parameters that train under freeze: the tensors freeze_selection picks."""
    idx, keep = freeze_selection(s, layers, modules)
    return sum_tensors(s, keep, idx)


def trainable_params(s: ModelSpec, method: str, rank: int = 16, targets: str = ALL_LINEAR, freeze_layers: int = 2,
                     modules: str = "all") -> int:
    """Parameters the optimizer updates under ``method``."""
    if method not in FINETUNE_METHODS:
        raise InputError(f"--finetune {method!r}: choose one of {', '.join(FINETUNE_METHODS)}")
    if method == "full":
        return count_params(s).total
    if method == "freeze":
        return freeze_params(s, freeze_layers, modules)
    if rank < 1:
        raise InputError(f"--lora-rank {rank}: choose a positive integer (8, 16, 64 are common)")
    return lora_params(s, targets, rank)


def plan_trainable(s: ModelSpec, plan) -> int:
    """``trainable_params`` for a plan's knobs (qwen_ds.knobs.Plan: finetune, lora_rank, lora_targets, ...)."""
    return trainable_params(s, plan.finetune, plan.lora_rank, plan.lora_targets, plan.freeze_layers,
                            plan.trainable_modules)
