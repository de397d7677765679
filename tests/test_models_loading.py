"""How --model values resolve (qwen_ds.models.registry.load_model) and how bad configs are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from qwen_ds.errors import InputError
from qwen_ds.models import count_params, load_model, preset_names
from qwen_ds.models.registry import find_in_hf_cache, hf_cache_dirs

TINY: dict[str, Any] = {
    "model_type": "qwen3", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True,
}
# same architecture as the tiny-qwen3 preset
TINY_TOTAL = 151_936


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No real HF cache, and a fresh load_model cache (it is lru_cached on the --model string)."""
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    load_model.cache_clear()
    yield
    load_model.cache_clear()


def write_config(path: Path, cfg: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def refused(model: str) -> str:
    with pytest.raises(InputError) as info:
        load_model(model)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- accepted forms


@pytest.mark.parametrize("given", ["Qwen3-8B", "qwen3-8b", "QWEN3-8B", "qWeN3-8b"])
def test_preset_name_case_insensitive(given):
    spec = load_model(given)
    assert spec.name == "Qwen3-8B"
    assert count_params(spec).total == 8_190_735_360


@pytest.mark.parametrize("given, name", [
    ("Qwen/Qwen3-8B", "Qwen3-8B"),
    ("qwen/qwen3-8b", "Qwen3-8B"),
    ("Qwen/Qwen3-30B-A3B", "Qwen3-30B-A3B"),
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", "Qwen3-Next-80B-A3B"),
])
def test_preset_hf_id(given, name):
    assert load_model(given).name == name


def test_every_preset_loads():
    names = preset_names()
    assert len(names) == len({n.lower() for n in names})
    for name in names:
        assert load_model(name).name == name


def test_config_json_path(tmp_path):
    path = write_config(tmp_path / "my-model.json", TINY)
    spec = load_model(str(path))
    assert spec.name == "my-model"
    assert spec.family == "qwen3"
    assert spec.source == str(path)
    assert count_params(spec).total == TINY_TOTAL


def test_config_json_path_named_config_json(tmp_path):
    path = write_config(tmp_path / "acme-7b" / "config.json", TINY)
    spec = load_model(str(path))
    assert spec.name == "acme-7b"
    assert count_params(spec).total == TINY_TOTAL


def test_hf_model_directory(tmp_path):
    write_config(tmp_path / "tiny-dir" / "config.json", TINY)
    (tmp_path / "tiny-dir" / "tokenizer.json").write_text("{}")
    spec = load_model(str(tmp_path / "tiny-dir"))
    assert spec.name == "tiny-dir"
    assert spec.source == str(tmp_path / "tiny-dir" / "config.json")
    assert count_params(spec).total == TINY_TOTAL


def test_home_relative_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_config(tmp_path / "models" / "m" / "config.json", TINY)
    assert count_params(load_model("~/models/m")).total == TINY_TOTAL


def make_hf_cache(root: Path, model_id: str, cfg: dict, *, commit: str = "0123abcd" * 5, ref: bool = True) -> Path:
    repo = root / ("models--" + model_id.replace("/", "--"))
    path = write_config(repo / "snapshots" / commit / "config.json", cfg)
    if ref:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit + "\n")
    return path


def test_hf_id_in_local_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    path = make_hf_cache(hub, "acme/tiny", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert find_in_hf_cache("acme/tiny") == path
    spec = load_model("acme/tiny")
    assert spec.name == "tiny"
    assert spec.source == str(path)
    assert count_params(spec).total == TINY_TOTAL


def test_hf_cache_refs_main_wins_over_newer_snapshot(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    make_hf_cache(hub, "acme/tiny", TINY, commit="a" * 40)
    other = dict(TINY, num_hidden_layers=4)
    newer = write_config(hub / "models--acme--tiny" / "snapshots" / ("b" * 40) / "config.json", other)
    os.utime(newer, (2_000_000_000, 2_000_000_000))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert load_model("acme/tiny").num_layers == 2


def test_hf_cache_without_refs_takes_newest_snapshot(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    old = make_hf_cache(hub, "acme/tiny", TINY, commit="a" * 40, ref=False)
    os.utime(old, (1_000_000_000, 1_000_000_000))
    newer = write_config(hub / "models--acme--tiny" / "snapshots" / ("b" * 40) / "config.json", dict(TINY, num_hidden_layers=4))
    os.utime(newer, (2_000_000_000, 2_000_000_000))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert load_model("acme/tiny").num_layers == 4


def test_hf_cache_odd_ref_falls_back_to_newest_snapshot(tmp_path, monkeypatch):
    """refs/main holds a 40-char hash; 1 MiB there was read whole and made a path too long to stat (a traceback)."""
    hub = tmp_path / "hub"
    make_hf_cache(hub, "acme/tiny", TINY, commit="a" * 40)
    (hub / "models--acme--tiny" / "refs" / "main").write_text("b" * 2**20)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert load_model("acme/tiny").num_layers == 2


def test_hf_cache_via_hf_home(tmp_path, monkeypatch):
    make_hf_cache(tmp_path / "hfhome" / "hub", "acme/tiny", TINY)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert load_model("acme/tiny").name == "tiny"


def test_hf_cache_via_xdg_default(tmp_path):
    make_hf_cache(tmp_path / "xdg-cache" / "huggingface" / "hub", "acme/tiny", TINY)
    assert load_model("acme/tiny").name == "tiny"


def test_hf_id_missing_from_cache_names_the_cache_dirs(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    make_hf_cache(hub, "acme/tiny", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    msg = refused("acme/missing")
    assert "acme/missing" in msg
    dirs = hf_cache_dirs()
    assert dirs == [hub, tmp_path / "hfhome" / "hub", tmp_path / "xdg-cache" / "huggingface" / "hub"]
    for d in dirs:
        assert str(d) in msg


def test_unknown_name_lists_accepted_forms():
    msg = refused("no-such-model")
    assert "no-such-model" in msg
    assert "Qwen3-0.6B" in msg
    assert "config.json" in msg


def test_load_model_is_cached_per_string(tmp_path):
    path = write_config(tmp_path / "c.json", TINY)
    first = load_model(str(path))
    write_config(path, dict(TINY, num_hidden_layers=5))
    assert load_model(str(path)) is first
    load_model.cache_clear()
    assert load_model(str(path)).num_layers == 5


def test_multimodal_text_config(tmp_path):
    cfg = {
        "model_type": "qwen3_vl",
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": TINY,
        "vision_config": {"hidden_size": 32, "depth": 2},
    }
    spec = load_model(str(write_config(tmp_path / "vl" / "config.json", cfg)))
    assert spec.family == "qwen3"
    assert spec.hidden_size == 64
    assert count_params(spec).total == TINY_TOTAL


# --------------------------------------------------------------------------- refused inputs


def test_malformed_json_names_the_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "model_type": "qwen3",\n  "hidden_size": 64,,\n  "vocab_size": 10\n}\n')
    msg = refused(str(path))
    assert str(path) in msg
    assert "line 3" in msg
    assert "malformed JSON" in msg


def test_malformed_json_in_model_directory(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{")
    assert "line 1" in refused(str(tmp_path / "m"))


def test_missing_json_file(tmp_path):
    msg = refused(str(tmp_path / "nope.json"))
    assert "cannot read" in msg
    assert "nope.json" in msg


def test_unreadable_file_chmod(tmp_path):
    path = write_config(tmp_path / "config.json", TINY)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 leaves the file readable")
        msg = refused(str(path))
        assert "cannot read" in msg
    finally:
        path.chmod(0o644)


def test_directory_named_config_json(tmp_path):
    (tmp_path / "m" / "config.json").mkdir(parents=True)
    assert f"{tmp_path / 'm' / 'config.json'}: a directory, not a regular file" in refused(str(tmp_path / "m"))
    assert "directory has no config.json" in refused(str(tmp_path / "m" / "config.json"))  # read as a model directory


def test_directory_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = refused(str(tmp_path / "empty"))
    assert "no config.json" in msg


def test_non_utf8_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xff\xfe{"model_type": "qwen3"}')
    msg = refused(str(path))
    assert "not UTF-8" in msg


def test_json_list_instead_of_object(tmp_path):
    msg = refused(str(write_config(tmp_path / "config.json", [TINY])))
    assert "JSON object" in msg


@pytest.mark.parametrize("value", ["null", "42", '"qwen3"'])
def test_json_scalar_instead_of_object(tmp_path, value):
    path = tmp_path / "config.json"
    path.write_text(value)
    assert "JSON object" in refused(str(path))


def _without(key: str) -> dict:
    return {k: v for k, v in TINY.items() if k != key}


@pytest.mark.parametrize("cfg, expect", [
    (_without("model_type"), "model_type"),
    (dict(TINY, model_type=""), "model_type"),
    (_without("hidden_size"), "hidden_size"),
    (_without("num_hidden_layers"), "num_hidden_layers"),
    (_without("vocab_size"), "vocab_size"),
    (_without("num_attention_heads"), "num_attention_heads"),
    (dict(TINY, num_hidden_layers="two"), "num_hidden_layers"),
    (dict(TINY, hidden_size=64.5), "hidden_size"),
    (dict(TINY, hidden_size=True), "hidden_size"),
    (dict(TINY, hidden_size=[64]), "hidden_size"),
    (dict(TINY, vocab_size=-1), "vocab_size"),
    (dict(TINY, num_hidden_layers=0), "num_hidden_layers"),
    (dict(TINY, intermediate_size=0), "intermediate_size"),
    (dict(TINY, num_attention_heads=6, num_key_value_heads=4), "num_key_value_heads"),
    (dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=8, moe_intermediate_size=16), "num_experts_per_tok"),
    (dict(TINY, model_type="qwen3_moe", num_experts_per_tok=2, moe_intermediate_size=16), "num_experts"),
    (dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2), "moe_intermediate_size"),
    (dict(TINY, model_type="qwen3_next", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16), "linear_"),
    (dict(TINY, model_type="qwen3_next", layer_types=["full_attention"], num_experts=4, num_experts_per_tok=2,
          moe_intermediate_size=16, linear_num_key_heads=1, linear_num_value_heads=1, linear_key_head_dim=8,
          linear_value_head_dim=8, linear_conv_kernel_dim=4), "layer_types"),
])
def test_bad_config_fields(tmp_path, cfg, expect):
    path = write_config(tmp_path / "config.json", cfg)
    msg = refused(str(path))
    assert expect in msg
    assert str(path) in msg


def test_heads_not_multiple_message(tmp_path):
    path = write_config(tmp_path / "config.json", dict(TINY, num_attention_heads=6, num_key_value_heads=4))
    msg = refused(str(path))
    assert "num_attention_heads=6" in msg and "num_key_value_heads=4" in msg


def test_topk_exceeds_experts_message(tmp_path):
    path = write_config(tmp_path / "config.json",
                        dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=8, moe_intermediate_size=16))
    msg = refused(str(path))
    assert "num_experts_per_tok=8" in msg and "num_experts=4" in msg


@pytest.mark.parametrize("key, limit", [
    ("num_hidden_layers", 10_000), ("hidden_size", 2**20), ("intermediate_size", 2**22), ("vocab_size", 2**24),
    ("num_attention_heads", 2**16), ("head_dim", 2**16), ("max_position_embeddings", 2**31),
])
def test_absurd_dims_refused_at_the_bound(tmp_path, key, limit):
    """The bound itself loads; one more is refused naming the key, the bound and the file."""
    cfg = dict(TINY, num_attention_heads=2, num_key_value_heads=2) if key == "num_attention_heads" else TINY
    load_model(str(write_config(tmp_path / "ok" / "config.json", dict(cfg, **{key: limit}))))
    path = write_config(tmp_path / "bad" / "config.json", dict(cfg, **{key: limit + 1}))
    msg = refused(str(path))
    assert f"{path}: '{key}' = {limit + 1:,} is over the {limit:,} qwen-ds accepts" in msg


@pytest.mark.parametrize("key", ["num_experts", "moe_intermediate_size", "num_experts_per_tok"])
def test_absurd_moe_dims_refused(tmp_path, key):
    path = write_config(tmp_path / "config.json", dict(_MOE, **{key: 10**9}))
    assert f"'{key}' = 1,000,000,000 is over the" in refused(str(path))


@pytest.mark.parametrize("raw, expect", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"model_type": "qwen3", "hidden_size": ' + "9" * 5000 + "}", "integer string conversion"),
], ids=["deep-nesting", "5000-digit-int"])
def test_pathological_json_is_one_line(tmp_path, raw, expect):
    """json.loads raised RecursionError / ValueError, not JSONDecodeError: a traceback before."""
    path = tmp_path / "config.json"
    path.write_text(raw)
    assert expect in refused(str(path))


def test_unreadable_model_directory_chmod(tmp_path):
    """pathlib's is_file() raised PermissionError inside a chmod 000 directory: a traceback before."""
    write_config(tmp_path / "m" / "config.json", TINY)
    (tmp_path / "m").chmod(0)
    try:
        if os.access(tmp_path / "m", os.R_OK):
            pytest.skip("running as root: chmod 000 leaves the directory readable")
        msg = refused(str(tmp_path / "m"))
        assert "Permission denied" in msg
    finally:
        (tmp_path / "m").chmod(0o755)


def test_path_with_newline_stays_one_line(tmp_path):
    d = tmp_path / "bad\nname"
    d.mkdir()
    refused(str(d))


# Fields of the wrong type or sign must be refused with an InputError naming the field, never a
# traceback.
_MOE = dict(TINY, model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


@pytest.mark.parametrize("raw, field", [
    (json.dumps(dict(TINY, head_dim=-8)), "head_dim"),
    (json.dumps(dict(TINY, head_dim="16")), "head_dim"),
    (json.dumps(dict(TINY, head_dim=16.5)), "head_dim"),
    (json.dumps(dict(TINY, head_dim=[16])), "head_dim"),
    (json.dumps(dict(_MOE, mlp_only_layers=3)), "mlp_only_layers"),
    (json.dumps(dict(TINY, max_position_embeddings="abc")), "max_position_embeddings"),
    (json.dumps(dict(TINY, model_type="qwen3_next", layer_types=5)), "layer_types"),
    (json.dumps(TINY).replace('"hidden_size": 64', '"hidden_size": NaN'), "hidden_size"),
    (json.dumps(TINY).replace('"hidden_size": 64', '"hidden_size": Infinity'), "hidden_size"),
    (json.dumps(dict(TINY, num_key_value_heads=0)), "num_key_value_heads"),
    (json.dumps(dict(_MOE, decoder_sparse_step=0)), "decoder_sparse_step"),
    (json.dumps(dict(TINY, model_type="qwen3_next", layer_types="full_attention")), "layer_types"),
], ids=["head_dim-negative", "head_dim-string", "head_dim-float", "head_dim-list", "mlp_only_layers-int",
        "max_position_embeddings-string", "layer_types-int", "hidden_size-NaN", "hidden_size-Infinity",
        "num_key_value_heads-0", "decoder_sparse_step-0", "layer_types-string"])
def test_bad_field_types(tmp_path, raw, field):
    path = tmp_path / "config.json"
    path.write_text(raw)
    assert field in refused(str(path))
