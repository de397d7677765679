"""ModelSpec: the architecture facts of a decoder model, built from config.json fields.

No torch here. Families with closed-form parameter counts: llama, qwen2, qwen3, qwen3_moe,
qwen3_next. Any other ``model_type`` gets a generic dense spec whose counts come from a
meta-device build through transformers (see ``meta.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from ..errors import InputError

SUPPORTED_FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe", "qwen3_next")
FULL_ATTENTION = "full_attention"
LINEAR_ATTENTION = "linear_attention"
DENSE = "dense"
MOE = "moe"


_FAMILY_HEAD_DIM = {"qwen3": 128, "qwen3_next": 256}
# transformers 5.x class defaults when config.json leaves num_key_value_heads out (Llama: = heads)
_FAMILY_KV_HEADS = {"qwen2": 32, "qwen3": 32, "qwen3_moe": 4, "qwen3_next": 2}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts. Sizes are element counts; every field comes from config.json."""

    name: str
    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    #: per layer: "full_attention" or "linear_attention" (Gated DeltaNet)
    layer_types: tuple[str, ...] = ()
    #: per layer: "dense" or "moe"
    mlp_types: tuple[str, ...] = ()
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 0
    max_position_embeddings: int = 0
    #: where the facts come from (preset source, file path, or cache path)
    source: str = ""
    #: the raw config.json dict (kept for meta-device builds and the runtime)
    config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)
    #: for families without a closed form: total params measured on the meta device
    measured_total_params: int | None = None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def closed_form(self) -> bool:
        return self.family in SUPPORTED_FAMILIES

    @cached_property
    def kind_positions(self) -> Mapping[tuple[str, str], tuple[int, ...]]:
        """Ascending layer indexes of each (mixer type, mlp type) kind, in order of first appearance.
        A layer's shapes depend on its kind only, so sums over layers are sums over these few kinds,
        and a range of layers (a pipeline stage) counts them by bisection. Computed once: the planner
        asks thousands of times and a model may have 10,000 layers."""
        pos: dict[tuple[str, str], list[int]] = {}
        for i, kind in enumerate(zip(self.layer_types, self.mlp_types)):
            pos.setdefault(kind, []).append(i)
        return {kind: tuple(idx) for kind, idx in pos.items()}

    @property
    def layer_kinds(self) -> tuple[tuple[tuple[str, str], int], ...]:
        """((mixer type, mlp type), number of layers of that kind)."""
        return tuple((kind, len(idx)) for kind, idx in self.kind_positions.items())

    @property
    def n_full_attention_layers(self) -> int:
        return sum(n for (mixer, _), n in self.layer_kinds if mixer == FULL_ATTENTION)

    @property
    def n_linear_attention_layers(self) -> int:
        return sum(n for (mixer, _), n in self.layer_kinds if mixer == LINEAR_ATTENTION)

    @property
    def n_moe_layers(self) -> int:
        return sum(n for (_, mlp), n in self.layer_kinds if mlp == MOE)

    def with_layers(self, num_layers: int) -> "ModelSpec":
        """The same architecture at another depth (layer pattern recomputed from the config)."""
        cfg = dict(self.config)
        cfg["num_hidden_layers"] = num_layers
        cfg.pop("layer_types", None)
        return spec_from_config(cfg, name=f"{self.name}-L{num_layers}", source=self.source)


#: Largest value accepted per config.json key, far above any real model (Qwen3-235B: 94 layers, h 4096,
#: 151,936 vocab, 128 experts; the largest public configs: ~160 layers, h 25,600, 262k vocab, 512 experts).
#: They stop a typo or a fuzzed file (num_hidden_layers 1e12) from running for minutes or exhausting memory.
MAX_LAYERS = 10_000
_MAX_DIM = 1 << 20
_MAX = {
    "num_hidden_layers": MAX_LAYERS,
    "hidden_size": _MAX_DIM,
    "intermediate_size": 4 * _MAX_DIM,
    "moe_intermediate_size": 4 * _MAX_DIM,
    "shared_expert_intermediate_size": 4 * _MAX_DIM,
    "vocab_size": 16 * _MAX_DIM,
    "num_experts": 1 << 16,
    "max_position_embeddings": 1 << 31,
}
#: every other integer key (heads, head dims, top-k, conv kernel, intervals)
_MAX_OTHER = 1 << 16


def _get(cfg: Mapping[str, Any], key: str, default: Any = None, *, where: str) -> Any:
    value = cfg.get(key, default)
    if value is None:
        raise InputError(f"{where}: config has no '{key}' (needed for a {cfg.get('model_type')} model); add it to the "
                         "config.json")
    return value


def _positive_int(cfg: Mapping[str, Any], key: str, default: Any = None, *, where: str,
                  allow_zero: bool = False) -> int:
    value = _get(cfg, key, default, where=where)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()))):
        raise InputError(f"{where}: '{key}' = {value!r} is not an integer; fix it in the config.json")
    value = int(value)
    if value < 0 or (value == 0 and not allow_zero):
        raise InputError(f"{where}: '{key}' = {value} must be {'>= 0' if allow_zero else '> 0'}; fix it in the "
                         "config.json")
    limit = _MAX.get(key, _MAX_OTHER)
    if value > limit:
        shown = f"{value:,}" if value < 10**18 else f"a {len(str(value))}-digit number"
        raise InputError(f"{where}: '{key}' = {shown} is over the {limit:,} qwen-ds accepts; fix it in the config.json")
    return value


def _layer_types(cfg: Mapping[str, Any], family: str, num_layers: int, where: str) -> tuple[str, ...]:
    if family != "qwen3_next":
        return (FULL_ATTENTION,) * num_layers
    given = cfg.get("layer_types")
    if given:
        if not isinstance(given, list):
            raise InputError(f"{where}: 'layer_types' must be a list of {num_layers} layer types; fix it in the "
                             "config.json")
        types = tuple(given)
        if len(types) != num_layers or any(t not in (FULL_ATTENTION, LINEAR_ATTENTION) for t in types):
            raise InputError(
                f"{where}: 'layer_types' must list {num_layers} entries of "
                f"'{FULL_ATTENTION}'/'{LINEAR_ATTENTION}'; fix it in the config.json"
            )
        return types
    interval = _positive_int(cfg, "full_attention_interval", 4, where=where)
    return tuple(FULL_ATTENTION if (i + 1) % interval == 0 else LINEAR_ATTENTION for i in range(num_layers))


def _mlp_types(cfg: Mapping[str, Any], family: str, num_layers: int, where: str) -> tuple[str, ...]:
    """transformers' rule: MoE where not in mlp_only_layers, experts > 0 and (i+1) % sparse_step == 0."""
    if family not in ("qwen3_moe", "qwen3_next"):
        return (DENSE,) * num_layers
    experts = _positive_int(cfg, "num_experts", where=where, allow_zero=True)
    step = _positive_int(cfg, "decoder_sparse_step", 1, where=where)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in only):
        raise InputError(f"{where}: 'mlp_only_layers' = {only!r} must be a list of layer indexes; fix it in the "
                         "config.json")
    only = set(only)
    return tuple(
        MOE if (i not in only and experts > 0 and (i + 1) % step == 0) else DENSE for i in range(num_layers)
    )


def text_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """Multimodal configs nest the decoder under text_config; use it when the top level has no hidden_size."""
    if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), Mapping):
        inner = dict(cfg["text_config"])
        inner.setdefault("model_type", cfg.get("model_type"))
        return inner
    return cfg


def spec_from_config(cfg: Mapping[str, Any], *, name: str, source: str = "") -> ModelSpec:
    """Build a ModelSpec from config.json fields. Raises InputError naming the field to fix."""
    where = source or name
    if not isinstance(cfg, Mapping):
        raise InputError(f"{where}: config must be a JSON object, got {type(cfg).__name__}")
    cfg = text_config(cfg)
    family = cfg.get("model_type")
    if not isinstance(family, str) or not family:
        raise InputError(f"{where}: config has no 'model_type'; add e.g. \"model_type\": \"qwen3\" to the config.json")
    h = _positive_int(cfg, "hidden_size", where=where)
    n_heads = _positive_int(cfg, "num_attention_heads", where=where)
    n_layers = _positive_int(cfg, "num_hidden_layers", where=where)
    # transformers' class defaults when a config.json leaves head_dim out: Qwen3Config 128,
    # Qwen3NextConfig 256; Llama/Qwen2/Qwen3-MoE derive h / heads.
    head_dim = _positive_int(cfg, "head_dim", None, where=where) if cfg.get("head_dim") is not None else (
        _FAMILY_HEAD_DIM.get(family) or h // n_heads)
    common = dict(
        name=name,
        family=family,
        vocab_size=_positive_int(cfg, "vocab_size", where=where),
        hidden_size=h,
        num_layers=n_layers,
        num_heads=n_heads,
        num_kv_heads=_positive_int(cfg, "num_key_value_heads", _FAMILY_KV_HEADS.get(family, n_heads), where=where),
        head_dim=int(head_dim),
        intermediate_size=_positive_int(cfg, "intermediate_size", 0, where=where, allow_zero=True),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", family not in SUPPORTED_FAMILIES)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        layer_types=_layer_types(cfg, family, n_layers, where),
        mlp_types=_mlp_types(cfg, family, n_layers, where),
        max_position_embeddings=_positive_int(cfg, "max_position_embeddings", 0, where=where, allow_zero=True),
        source=source,
        config=dict(cfg),
    )
    if common["num_heads"] % common["num_kv_heads"]:
        raise InputError(
            f"{where}: num_attention_heads={n_heads} is not a multiple of "
            f"num_key_value_heads={common['num_kv_heads']}; fix the config.json"
        )
    if family in ("qwen3_moe", "qwen3_next") and MOE in common["mlp_types"]:
        common.update(
            num_experts=_positive_int(cfg, "num_experts", where=where),
            experts_per_token=_positive_int(cfg, "num_experts_per_tok", where=where),
            moe_intermediate_size=_positive_int(cfg, "moe_intermediate_size", where=where),
        )
        if common["experts_per_token"] > common["num_experts"]:
            raise InputError(
                f"{where}: num_experts_per_tok={common['experts_per_token']} exceeds "
                f"num_experts={common['num_experts']}; fix the config.json"
            )
    if family == "qwen3_next":
        common.update(
            shared_expert_intermediate_size=_positive_int(
                cfg, "shared_expert_intermediate_size", 512, where=where, allow_zero=True
            ),
            linear_num_key_heads=_positive_int(cfg, "linear_num_key_heads", where=where),
            linear_num_value_heads=_positive_int(cfg, "linear_num_value_heads", where=where),
            linear_key_head_dim=_positive_int(cfg, "linear_key_head_dim", where=where),
            linear_value_head_dim=_positive_int(cfg, "linear_value_head_dim", where=where),
            linear_conv_kernel=_positive_int(cfg, "linear_conv_kernel_dim", where=where),
        )
    if DENSE in common["mlp_types"] and common["intermediate_size"] == 0:
        raise InputError(f"{where}: 'intermediate_size' is missing or 0 but the model has dense MLP layers; fix the "
                         "config.json")
    return ModelSpec(**common)

