"""Closed-form parameter counts against transformers' meta-device models, and known exact values.

The closed forms live in qwen_ds/models/counts.py; the reference numbers in
shared/reference/qwen-models.md §1-2. Tests that build transformers models skip without it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_ds.models import count_params, load_model, preset_names, spec_from_config
from qwen_ds.models.counts import kind_counts, layer_tensors, layers_params, moe_inactive_params
from qwen_ds.models.spec import MOE
from qwen_ds.sharding import (autotp_sharded_params, autotp_shards, fp8_converts, fp8_matmul_params, largest_gathered,
                              persistent_params)


@pytest.fixture(autouse=True)
def _fresh_load_model_cache():
    load_model.cache_clear()
    yield
    load_model.cache_clear()


def _meta(config: dict[str, Any]):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from qwen_ds.models.meta import build_meta_model

    return build_meta_model(config)


def meta_counts(config: dict[str, Any]) -> tuple[int, int]:
    """(parameter count, number of layers whose MLP has routed experts) of the transformers model on meta."""
    model = _meta(config)
    total = sum(p.numel() for p in model.parameters())
    n_moe = sum(hasattr(layer.mlp, "experts") for layer in model.model.layers)
    return total, n_moe


def expected_moe_layers(cfg: dict[str, Any]) -> list[int]:
    """transformers' rule, restated independently of qwen_ds.models.spec."""
    if cfg["model_type"] not in ("qwen3_moe", "qwen3_next"):
        return []
    only = set(cfg.get("mlp_only_layers") or ())
    step = cfg.get("decoder_sparse_step", 1)
    return [i for i in range(cfg["num_hidden_layers"]) if i not in only and cfg["num_experts"] > 0 and (i + 1) % step == 0]


def check_config(cfg: dict[str, Any]) -> None:
    spec = spec_from_config(cfg, name="random", source="hypothesis")
    c = count_params(spec)
    total, n_moe_meta = meta_counts(cfg)
    assert c.total == total, f"closed form {c.total:,} != meta {total:,} for {json.dumps(cfg)}"
    moe_layers = expected_moe_layers(cfg)
    assert n_moe_meta == len(moe_layers)
    assert spec.n_moe_layers == len(moe_layers)
    assert [i for i, t in enumerate(spec.mlp_types) if t == MOE] == moe_layers
    inactive = 0
    if moe_layers:
        E, k, Im, h = cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"], cfg["hidden_size"]
        inactive = len(moe_layers) * 3 * (E - k) * Im * h
        assert moe_inactive_params(spec) == 3 * (E - k) * Im * h
    assert c.active == c.total - inactive
    assert c.total == c.embedding + c.lm_head + c.final_norm + sum(lp.total for lp in c.layers)
    assert len(c.layers) == cfg["num_hidden_layers"]


# --------------------------------------------------------------------------- presets vs meta


@pytest.mark.runtime
@pytest.mark.parametrize("name", preset_names())
def test_preset_closed_form_matches_meta_model(name):
    spec = load_model(name)
    assert spec.closed_form, f"preset {name} should have a closed form"
    total, n_moe = meta_counts(dict(spec.config))
    c = count_params(spec)
    assert c.total == total
    assert spec.n_moe_layers == n_moe


def test_every_family_has_a_preset():
    families = {load_model(n).family for n in preset_names()}
    assert {"llama", "qwen2", "qwen3", "qwen3_moe", "qwen3_next"} <= families
    assert any(n.lower().startswith("tiny-") for n in preset_names())


# --------------------------------------------------------------------------- random small configs

SETTINGS = settings(deadline=None, max_examples=15, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@st.composite
def attention_shape(draw, family: str) -> dict[str, Any]:
    n_kv = draw(st.sampled_from([1, 2, 4]))
    n_heads = n_kv * draw(st.sampled_from([1, 2, 3]))
    cfg: dict[str, Any] = {"num_attention_heads": n_heads}
    # Llama defaults num_key_value_heads to nH; the Qwen config classes default it to a constant
    # (see test_missing_num_key_value_heads below), so only Llama MHA configs leave it out here.
    if family != "llama" or n_kv != n_heads or draw(st.booleans()):
        cfg["num_key_value_heads"] = n_kv
    # h a multiple of nH (LlamaConfig validates it even with an explicit head_dim)
    cfg["hidden_size"] = n_heads * draw(st.sampled_from([4, 6, 8, 12, 16]))
    if draw(st.booleans()):  # explicit head_dim, often != h / nH
        cfg["head_dim"] = draw(st.sampled_from([4, 8, 12, 16, 24, 32]))
    # else the family default: h / nH (llama, qwen2, qwen3_moe); 128 for qwen3, 256 for qwen3_next
    return cfg


@st.composite
def common_config(draw, family: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {"model_type": family}
    cfg.update(draw(attention_shape(family)))
    cfg["vocab_size"] = draw(st.integers(17, 1000))
    cfg["num_hidden_layers"] = draw(st.integers(1, 6))
    cfg["intermediate_size"] = draw(st.integers(8, 200))
    tie = draw(st.sampled_from([True, False, None]))
    if tie is not None:
        cfg["tie_word_embeddings"] = tie
    bias = draw(st.sampled_from([True, False, None]))
    if bias is not None:
        cfg["attention_bias"] = bias
    return cfg


@st.composite
def moe_fields(draw, cfg: dict[str, Any]) -> dict[str, Any]:
    L = cfg["num_hidden_layers"]
    E = draw(st.integers(1, 12))
    out: dict[str, Any] = {
        "num_experts": E,
        "num_experts_per_tok": draw(st.integers(1, E)),
        "moe_intermediate_size": draw(st.integers(4, 48)),
        "decoder_sparse_step": draw(st.sampled_from([1, 2])),
        "mlp_only_layers": sorted(draw(st.sets(st.integers(0, L - 1), max_size=L))),
        "norm_topk_prob": True,
    }
    return out


@given(data=st.data())
@SETTINGS
@pytest.mark.runtime
def test_random_llama(data):
    cfg = data.draw(common_config("llama"))
    mlp_bias = data.draw(st.sampled_from([True, False, None]))
    if mlp_bias is not None:
        cfg["mlp_bias"] = mlp_bias
    check_config(cfg)


@given(data=st.data())
@SETTINGS
@pytest.mark.runtime
def test_random_qwen2(data):
    cfg = data.draw(common_config("qwen2"))
    check_config(cfg)


@given(data=st.data())
@SETTINGS
@pytest.mark.runtime
def test_random_qwen3(data):
    cfg = data.draw(common_config("qwen3"))
    if data.draw(st.booleans()):
        cfg["mlp_bias"] = True  # not a Qwen3 option: must be ignored by both sides
    check_config(cfg)


@given(data=st.data())
@SETTINGS
@pytest.mark.runtime
def test_random_qwen3_moe(data):
    cfg = data.draw(common_config("qwen3_moe"))
    cfg.update(data.draw(moe_fields(cfg)))
    check_config(cfg)


@given(data=st.data())
@SETTINGS
@pytest.mark.runtime
def test_random_qwen3_next(data):
    cfg = data.draw(common_config("qwen3_next"))
    cfg.update(data.draw(moe_fields(cfg)))
    nk = data.draw(st.sampled_from([1, 2, 4]))
    cfg.update(
        linear_num_key_heads=nk,
        linear_num_value_heads=nk * data.draw(st.sampled_from([1, 2, 3])),
        linear_key_head_dim=data.draw(st.sampled_from([4, 8, 16])),
        linear_value_head_dim=data.draw(st.sampled_from([4, 8, 12, 16])),
        linear_conv_kernel_dim=data.draw(st.integers(2, 4)),
        full_attention_interval=data.draw(st.integers(1, 4)),
        shared_expert_intermediate_size=data.draw(st.integers(4, 64)),
    )
    check_config(cfg)
    spec = spec_from_config(cfg, name="random")
    interval = cfg["full_attention_interval"]
    assert spec.n_full_attention_layers == cfg["num_hidden_layers"] // interval
    assert spec.n_linear_attention_layers == cfg["num_hidden_layers"] - cfg["num_hidden_layers"] // interval


@pytest.mark.runtime
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "qwen3_moe", "qwen3_next"])
def test_missing_num_key_value_heads(family):
    """A config.json without num_key_value_heads: the count must match what transformers builds
    (its defaults: Llama = heads, Qwen2/Qwen3 32, Qwen3-MoE 4, Qwen3-Next 2; 32 heads divide by all)."""
    cfg: dict[str, Any] = {
        "model_type": family, "vocab_size": 100, "hidden_size": 128, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 32, "head_dim": 8,
    }
    if family in ("qwen3_moe", "qwen3_next"):
        cfg.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)
    if family == "qwen3_next":
        cfg.update(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                   linear_conv_kernel_dim=4, full_attention_interval=2, shared_expert_intermediate_size=16)
    expected_kv = {"llama": 32, "qwen2": 32, "qwen3": 32, "qwen3_moe": 4, "qwen3_next": 2}[family]
    assert spec_from_config(cfg, name="no-kv").num_kv_heads == expected_kv
    check_config(cfg)


# --------------------------------------------------------------------------- exact known values (no transformers)

NEXT_GATED_ATTN = 27_263_488
NEXT_GDN = 33_718_464
NEXT_MOE_BLOCK = 1_614_809_088


def test_qwen3_next_80b_exact_values():
    spec = load_model("Qwen3-Next-80B-A3B")
    c = count_params(spec)
    assert c.total == 79_674_391_296
    assert c.active == 3_874_929_408
    assert c.active_non_embedding == 3_252_599_552
    assert c.active - c.embedding == 3_563_764_480
    assert c.non_embedding == 79_052_061_440
    assert c.embedding == c.lm_head == 311_164_928
    assert c.final_norm == 2048
    assert spec.n_linear_attention_layers == 36
    assert spec.n_full_attention_layers == 12
    assert spec.n_moe_layers == 48
    assert largest_gathered(spec)[0] == NEXT_MOE_BLOCK
    assert "moe" in largest_gathered(spec)[1].lower()
    kinds = c.by_kind()
    assert kinds["full_attention"] == 12 * NEXT_GATED_ATTN
    assert kinds["linear_attention"] == 36 * NEXT_GDN
    assert kinds["moe"] == 48 * NEXT_MOE_BLOCK
    assert kinds["norms"] == 48 * 2 * 2048
    assert "dense" not in kinds
    # per-layer active MoE: E*h + 3*k*Im*h + 3*h*Is + h
    assert {lp.mlp_active for lp in c.layers} == {35_653_632}
    # layer pattern: every 4th layer is full attention
    assert [i for i, t in enumerate(spec.layer_types) if t == "full_attention"] == list(range(3, 48, 4))


def test_qwen3_next_at_the_10000_layer_bound():
    """Counts are per layer kind x how many layers have it, so 10,000 layers cost no more than 48;
    the values are the per-kind block sizes above times the kind counts of the pattern."""
    spec = load_model("Qwen3-Next-80B-A3B").with_layers(10_000)
    c = count_params(spec)
    assert (spec.n_full_attention_layers, spec.n_linear_attention_layers, spec.n_moe_layers) == (2_500, 7_500, 10_000)
    blocks = 2_500 * NEXT_GATED_ATTN + 7_500 * NEXT_GDN + 10_000 * (NEXT_MOE_BLOCK + 2 * 2048)
    assert c.total == 2 * 311_164_928 + 2048 + blocks
    assert largest_gathered(spec)[0] == NEXT_MOE_BLOCK
    # a pipeline stage of layers 1000..1999 (250 full attention, 750 linear) counted by bisection
    assert layers_params(spec, range(1_000, 2_000)) == blocks // 10
    assert kind_counts(spec, range(1_000, 2_000)) == {("linear_attention", "moe"): 750, ("full_attention", "moe"): 250}


@st.composite
def layer_pattern(draw) -> dict[str, Any]:
    """A Qwen3-Next / Qwen3-MoE config with an irregular layer pattern (mlp_only_layers, sparse step)."""
    layers = draw(st.integers(1, 40))
    cfg = {"model_type": draw(st.sampled_from(["qwen3_moe", "qwen3_next"])), "vocab_size": 64, "hidden_size": 32,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48,
           "num_hidden_layers": layers, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
           "decoder_sparse_step": draw(st.integers(1, 3)), "full_attention_interval": draw(st.integers(1, 5)),
           "mlp_only_layers": sorted(draw(st.sets(st.integers(0, layers - 1), max_size=layers))),
           "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
           "linear_value_head_dim": 8, "linear_conv_kernel_dim": 4}
    return cfg


@given(cfg=layer_pattern(), data=st.data())
@SETTINGS
def test_sums_per_layer_kind_equal_sums_per_layer(cfg, data):
    """Every sum over layers is computed per (mixer, mlp) kind; it must equal the plain per-layer sum
    over any range (a pipeline stage) or any set of layers."""
    spec = spec_from_config(cfg, name="pattern")
    L = spec.num_layers
    a = data.draw(st.integers(0, L))
    stage = range(a, data.draw(st.integers(a, L)))
    picked = sorted(data.draw(st.sets(st.integers(0, L - 1))))

    def per_layer(layers, keep=lambda module, n: True) -> int:
        return sum(n for i in layers for module, n in layer_tensors(spec, i) if keep(module, n))

    for layers in (stage, picked, range(L)):
        assert kind_counts(spec, layers) == dict(Counter((spec.layer_types[i], spec.mlp_types[i]) for i in layers))
        assert layers_params(spec, layers) == per_layer(layers)
        assert autotp_sharded_params(spec, layers) == per_layer(layers, lambda module, n: autotp_shards(module))
    c = count_params(spec)
    assert c.total - c.embedding - c.lm_head - c.final_norm == per_layer(range(L))
    assert [(lp.mixer_type, lp.mlp_type) for lp in c.layers] == list(zip(spec.layer_types, spec.mlp_types))
    assert persistent_params(spec, 40) == per_layer(range(L), lambda module, n: n <= 40) + 32  # + final norm
    assert fp8_matmul_params(spec) == per_layer(range(L), lambda module, n: fp8_converts(module))


@pytest.mark.parametrize(
    "name, total, non_embedding, active",
    [
        ("Qwen3-0.6B", 596_049_920, 440_467_456, 596_049_920),
        ("Qwen3-1.7B", 1_720_574_976, 1_409_410_048, 1_720_574_976),
        ("Qwen3-4B", 4_022_468_096, 3_633_511_936, 4_022_468_096),
        ("Qwen3-8B", 8_190_735_360, 6_946_075_648, 8_190_735_360),
        ("Qwen3-14B", 14_768_307_200, 13_212_482_560, 14_768_307_200),
        ("Qwen3-32B", 32_762_123_264, 31_206_298_624, 32_762_123_264),
        ("Qwen3-30B-A3B", 30_532_122_624, 29_909_792_768, 3_353_032_704),
        ("Qwen3-235B-A22B", 235_093_634_560, 233_848_974_848, 22_190_763_520),
        ("Qwen3-Next-80B-A3B", 79_674_391_296, 79_052_061_440, 3_874_929_408),
    ],
)
def test_reference_table_values(name, total, non_embedding, active):
    c = count_params(load_model(name))
    assert c.total == total
    assert c.non_embedding == non_embedding
    assert c.active == active


def test_tied_embeddings_have_no_lm_head():
    c = count_params(load_model("Qwen3-0.6B"))
    assert c.lm_head == 0
    assert c.embedding == 151_936 * 1024


def test_dense_active_equals_total():
    for name in preset_names():
        spec = load_model(name)
        if spec.n_moe_layers == 0:
            assert count_params(spec).active == count_params(spec).total, name


# --------------------------------------------------------------------------- unknown model_type: meta fallback

UNKNOWN_CONFIGS = {
    "mistral": {
        "model_type": "mistral", "vocab_size": 500, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    },
    "gemma2": {
        "model_type": "gemma2", "vocab_size": 400, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
    },
}


@pytest.mark.runtime
@pytest.mark.parametrize("model_type", sorted(UNKNOWN_CONFIGS))
def test_unknown_model_type_uses_meta_fallback(tmp_path, model_type):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = UNKNOWN_CONFIGS[model_type]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec = load_model(str(path))
    assert not spec.closed_form
    assert spec.family == model_type

    kwargs = dict(cfg)
    hf_cfg = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_cfg)
    expected = sum(p.numel() for p in model.parameters())

    assert spec.measured_total_params == expected
    c = count_params(spec)
    assert c.total == expected
    assert c.active == expected
    # the directory form goes the same way
    load_model.cache_clear()
    assert count_params(load_model(str(tmp_path))).total == expected


@pytest.mark.runtime
@pytest.mark.parametrize("name", ["Qwen3-4B", "Qwen3-30B-A3B", "Qwen3-Next-80B-A3B", "Llama-3.1-8B"])
def test_gathered_tensors_match_the_meta_model(name):
    """sharding.gathered_tensors (the speed model's ZeRO-3 host term) counts the parameters at or above the persistence
    threshold, as DeepSpeed partitions them: checked on transformers' meta-device model, at two thresholds."""
    from qwen_ds.sharding import gathered_tensors

    spec = load_model(name)
    model = _meta(spec.config)
    for threshold in (10 * spec.hidden_size, 100_000):
        meta = sum(1 for p in model.parameters() if p.numel() >= threshold)
        assert gathered_tensors(spec, threshold) == meta, (name, threshold)
