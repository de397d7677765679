"""Resolve ``--model``: a preset name, a config.json path, an HF model directory, or an HF model id
found in the local HF cache (never the network)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import InputError, one_line
from .spec import SUPPORTED_FAMILIES, ModelSpec, spec_from_config

_DATA = Path(__file__).resolve().parent.parent / "data"


@lru_cache(maxsize=1)
def _presets() -> dict[str, dict[str, Any]]:
    with open(_DATA / "models.json", encoding="utf-8") as fh:
        data = json.load(fh)
    with open(_DATA / "tiny_models.json", encoding="utf-8") as fh:
        data["presets"].extend(json.load(fh)["presets"])
    return {p["name"].lower(): p for p in data["presets"]}


def preset_names() -> list[str]:
    return [p["name"] for p in _presets().values()]


def preset_entry(name: str) -> dict[str, Any] | None:
    presets = _presets()
    key = name.lower()
    if key in presets:
        return presets[key]
    for entry in presets.values():  # also accept the HF id of a preset, e.g. Qwen/Qwen3-8B
        if entry.get("hf_id") and entry["hf_id"].lower() == key:  # tiny presets have hf_id "": never match ""
            return entry
    return None


def _read_config(path: Path) -> dict[str, Any]:
    from ..fileio import read_text

    text = read_text(path, "model config", "pass a readable UTF-8 config.json to --model")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{one_line(path)} line {exc.lineno}: malformed JSON ({exc.msg}); fix the file or pass "
                         "another --model") from None
    except RecursionError:
        raise InputError(f"{one_line(path)}: nested too deeply to be a model config; pass a config.json to "
                         "--model") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise InputError(f"{one_line(path)}: {one_line(exc).split(';')[0][:120]}; a config.json holds ordinary "
                         "numbers") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{one_line(path)}: expected a JSON object with model_type, hidden_size, ...; pass a "
                         "config.json to --model")
    return cfg


def _stat_mode(path: Path, model: str) -> int | None:
    """st_mode of ``path``, None when it does not exist; a path we may not look at (chmod 000 directory)
    is an InputError instead of pathlib's PermissionError traceback."""
    try:
        return path.stat().st_mode
    except PermissionError as exc:
        raise InputError(f"--model {one_line(model)}: cannot read {one_line(path)} ({exc.strerror}); "
                         "fix its permissions or pass another --model") from None
    except (OSError, ValueError):  # missing, too long a name, a NUL byte: not a path, maybe a name
        return None


def hf_cache_dirs() -> list[Path]:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub."""
    dirs = []
    if os.environ.get("HF_HUB_CACHE"):
        dirs.append(Path(os.environ["HF_HUB_CACHE"]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub")
    return dirs


def _ref_config(repo: Path, snapshots: Path) -> Path | None:
    """config.json of the snapshot refs/main names; None when the ref is missing or odd (a 40-char hash
    is expected: read at most 1 KiB of it, so a FIFO or /dev/zero there cannot hang the lookup)."""
    from ..fileio import read_text

    try:
        commit = read_text(repo / "refs" / "main", "HF cache ref", "", limit=1024).strip()
    except InputError:
        return None
    cand = snapshots / commit / "config.json"
    return cand if commit and cand.is_file() else None


def find_in_hf_cache(model_id: str) -> Path | None:
    """config.json of ``org/name`` in the local HF cache: the snapshot refs/main points to, else the newest."""
    folder = "models--" + model_id.replace("/", "--")
    for cache in hf_cache_dirs():
        repo = cache / folder
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        cand = _ref_config(repo, snapshots)
        if cand is not None:
            return cand
        found = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        if found:
            return found[0]
    return None


def _with_counts(spec: ModelSpec) -> ModelSpec:
    if spec.closed_form:
        return spec
    from .meta import meta_param_count  # imports transformers only for unknown families

    return dataclasses.replace(spec,
                               measured_total_params=meta_param_count(spec.config, where=spec.source or spec.name))


@lru_cache(maxsize=64)
def load_model(model: str) -> ModelSpec:
    """Resolve a --model value. Raises InputError with the accepted forms when nothing matches."""
    if not model.strip():  # e.g. an unset $MODEL in a CI script: never fall back to some preset
        raise InputError(f"--model {model!r}: empty; give a preset name (qwen-ds models), a config.json path, "
                         "an HF model directory, or an HF id in the local cache")
    entry = preset_entry(model)
    if entry is not None:
        return _with_counts(spec_from_config(entry["config"], name=entry["name"], source=entry.get("source", "")))
    path = Path(model).expanduser()
    mode = _stat_mode(path, model)
    if mode is not None and stat.S_ISDIR(mode):
        cfg_path = path / "config.json"
        if _stat_mode(cfg_path, model) is None:
            raise InputError(f"--model {one_line(model)}: directory has no config.json; pass an HF model directory or "
                             "a config.json file")
        return _with_counts(spec_from_config(_read_config(cfg_path), name=path.name, source=str(cfg_path)))
    # anything else that exists goes to the reader, which refuses /dev/zero, FIFOs and oversized files
    if mode is not None or model.endswith(".json"):
        return _with_counts(spec_from_config(
            _read_config(path), name=path.stem if path.name != "config.json" else path.parent.name or "model",
            source=str(path)))
    if model.count("/") == 1 and not model.startswith((".", "/")):
        cfg_path = find_in_hf_cache(model)
        if cfg_path is None:
            raise InputError(
                f"--model {one_line(model)}: not a preset and not in the local HF cache "
                f"({', '.join(str(d) for d in hf_cache_dirs())}); download it first or pass a config.json path"
            )
        return _with_counts(spec_from_config(_read_config(cfg_path), name=model.split("/")[1], source=str(cfg_path)))
    raise InputError(
        f"--model {one_line(model)}: unknown model; use a preset ({', '.join(preset_names()[:6])}, ... see `qwen-ds "
        "models`), a config.json path, an HF model directory, or an HF id in the local cache"
    )


__all__ = ["SUPPORTED_FAMILIES", "load_model", "preset_names", "preset_entry", "find_in_hf_cache"]
