"""Whether a ds_config.json is the one a plan.json was made with.

plan.json keeps the config it was made with (``ds_config``) and that config's digest
(``ds_config_sha256``), so a reader can tell whether a config belongs to its plan and, when it does
not, which keys differ.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .errors import one_line

DIGEST_KEY = "ds_config_sha256"
CONFIG_KEY = "ds_config"


def canonical(value: Any) -> Any:
    """The config as its digest sees it: integral floats as integers (1e9 and 1000000000 are the same
    value to DeepSpeed, and JSON tools rewrite one as the other); bools stay bools."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def config_digest(cfg: dict[str, Any]) -> str:
    """sha256 of the canonical JSON text: sort_keys, separators (",", ":"), ASCII, integral floats as integers."""
    text = json.dumps(canonical(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


ABSENT = object()


def differences(config: Any, planned: Any) -> list[tuple[str, Any, Any]]:
    """(dotted path, value in config, value in plan) of every leaf that differs, as the digest sees
    values; ABSENT where one side has no such key."""
    return _diff(canonical(config), canonical(planned), "")


def _diff(config: Any, planned: Any, path: str) -> list[tuple[str, Any, Any]]:
    if isinstance(config, dict) and isinstance(planned, dict):
        out = []
        for key in list(planned) + [k for k in config if k not in planned]:
            out += _diff(config.get(key, ABSENT), planned.get(key, ABSENT), f"{path}.{key}" if path else key)
        return out
    if config is ABSENT or planned is ABSENT or type(config) is not type(planned) or config != planned:
        return [(path or "$", config, planned)]
    return []


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return one_line(text if len(text) <= 60 else text[:57] + "...")


def values_text(in_config: Any, in_plan: Any) -> str:
    return f"config {_show(in_config)}, plan {_show(in_plan)}"


def difference_text(diff: tuple[str, Any, Any]) -> str:
    path, in_config, in_plan = diff
    return f"{path}: {values_text(in_config, in_plan)}"


@dataclass(frozen=True)
class PairCheck:
    """Whether a ds_config belongs to a plan.json: ``match``; ``unchecked`` (a plan.json without a
    digest, from before qwen-ds recorded one); ``mismatch`` with the differing keys (empty when the
    plan holds a digest but not the config, or a digest that is not its own config's)."""

    status: str
    differences: tuple[tuple[str, Any, Any], ...] = ()


def check_pair(cfg: dict[str, Any], digest: str | None, stored: dict[str, Any] | None) -> PairCheck:
    """``cfg`` against a plan's recorded ``digest`` and the config it keeps (``stored``)."""
    if digest is None:
        return PairCheck("unchecked")
    if config_digest(cfg) == digest:
        return PairCheck("match")
    return PairCheck("mismatch", tuple(differences(cfg, stored)) if isinstance(stored, dict) else ())


def mismatch_line(config_name: str, plan_name: str, check: PairCheck, limit: int = 8) -> str:
    diffs = [difference_text(d) for d in check.differences]
    if diffs:
        more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
        what = "; ".join(diffs[:limit]) + more
    else:
        what = f"its {DIGEST_KEY} is not the digest of this config (nor of the {CONFIG_KEY} it keeps)"
    return (f"{one_line(config_name)} is not the config {one_line(plan_name)} was made with: {what}; "
            "regenerate both with qwen-ds gen-config (--set for your edits), or pass the plan made with this config")


def unchecked_line(config_name: str, plan_name: str) -> str:
    return (f"{one_line(plan_name)} has no {DIGEST_KEY} (written by an older qwen-ds), so it cannot be checked against "
            f"{one_line(config_name)}; regenerate both with qwen-ds gen-config to get the check")


def plan_problems(pair: PairCheck, config: str, plan_path: str) -> list:
    """validate's problems for a config against its plan.json: one error per key where the config
    differs from the one the plan was made with (a warning for a plan.json that records no digest)."""
    from .validate.problems import Problem

    if pair.status == "unchecked":
        return [Problem("$", unchecked_line(config, plan_path), "plan", "warning")]
    if pair.status == "match":
        return []
    if not pair.differences:
        return [Problem("$", mismatch_line(config, plan_path, pair), "plan")]
    fix = (f"{one_line(plan_path)} was made with another config; regenerate both with qwen-ds gen-config "
           "(--set for your edits), or pass the plan made with this config")
    return [Problem("$" if path == "$" else "$." + path, f"{values_text(a, b)}: {fix}", "plan")
            for path, a, b in pair.differences]
