"""plan.json as gen-config writes it and launch / validate read it.

plan.json keeps the ds_config.json it was made with (``ds_config``) and that config's digest
(``ds_config_sha256``), so a reader can tell whether a config is the one its plan was made for and,
when it is not, which keys differ. Readers get the document through ``read_plan_document``, which
checks the types of the fields they use: a wrong type is one line naming the field (exit 2), not a
traceback in whichever reader touched it first. (Issue #12 turns this into a typed PlanDocument.)
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import InputError, one_line
from .plan import INFER_PRECISIONS, LOSS_PATHS, MODES, OFFLOAD

DIGEST_KEY = "ds_config_sha256"
CONFIG_KEY = "ds_config"
FIX = "pass the plan.json gen-config wrote, or regenerate it"


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


def check_pair(cfg: dict[str, Any], doc: dict[str, Any]) -> PairCheck:
    want = doc.get(DIGEST_KEY)
    if want is None:
        return PairCheck("unchecked")
    if config_digest(cfg) == want:
        return PairCheck("match")
    stored = doc.get(CONFIG_KEY)
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


# --------------------------------------------------------------------------- field types


def _int(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(values: tuple) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


#: dotted path -> (check, what it must be). Readers default every field that is absent (older or
#: hand-made plan.json files); a field that is present must have its type.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is(dict), "an object"),
    "model.name": (_is(str), "a string"),
    "model.config": (_is(dict), "an object (the model's config.json)"),
    "cluster": (_is(dict), "an object"),
    "cluster.gpu": (_is(str), "a string"),
    "cluster.nodes": (_int(1), "a positive integer"),
    "cluster.gpus_per_node": (_int(1), "a positive integer"),
    "cluster.world_size": (_int(1), "a positive integer"),
    "cluster.hostfile": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "workload": (_is(dict), "an object"),
    "workload.mode": (_one_of(MODES), f"one of {', '.join(MODES)}"),
    "workload.seq_len": (_int(1), "a positive integer"),
    "workload.new_tokens": (_int(0), "an integer >= 0"),
    "plan": (_is(dict), "an object"),
    "plan.zero_stage": (lambda v: _int(0)(v) and v <= 3, "0, 1, 2 or 3"),
    "plan.offload_optimizer": (_one_of(OFFLOAD), f"one of {', '.join(OFFLOAD)}"),
    "plan.offload_param": (_one_of(OFFLOAD), f"one of {', '.join(OFFLOAD)}"),
    "plan.tp": (_int(1), "a positive integer"),
    "plan.pp": (_int(1), "a positive integer"),
    "plan.dp": (_int(1), "a positive integer"),
    "plan.micro_batch": (_int(1), "a positive integer"),
    "plan.grad_accum": (_int(1), "a positive integer"),
    "plan.checkpointing": (_is(bool), "true or false"),
    "plan.precision": (_one_of(INFER_PRECISIONS), f"one of {', '.join(INFER_PRECISIONS)}"),
    "plan.loss": (_one_of(LOSS_PATHS), f"one of {', '.join(LOSS_PATHS)}"),
    "fp8_recipe": (lambda v: v is None or isinstance(v, dict), "an object or null"),
    "overrides": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "memory": (_is(dict), "an object"),
    "memory.gpu_total_bytes": (_number, "a number"),
    "memory.gpu_allocated_bytes": (_number, "a number"),
    "memory.gpu_reserved_bytes": (_number, "a number"),
    "memory.cpu_total_bytes_per_node": (_number, "a number"),
    "memory.terms": (lambda v: isinstance(v, dict) and all(_number(x) for x in v.values()), "an object of numbers"),
    DIGEST_KEY: (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None, "64 lowercase hex digits"),
    CONFIG_KEY: (_is(dict), "an object (the ds_config.json the plan was made with)"),
}


def check_fields(doc: Any, where: str) -> None:
    """InputError naming the first field of ``FIELDS`` that is present with the wrong type."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: a plan.json is a JSON object, got {_json_type(doc)}; {FIX}")
    for path, (ok, expected) in FIELDS.items():
        parent, _, key = path.rpartition(".")
        node = doc.get(parent) if parent else doc
        if isinstance(node, dict) and key in node and not ok(node[key]):
            raise InputError(f"{where}: {path} is {_show(node[key])} ({_json_type(node[key])}); it must be {expected}; {FIX}")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(v), type(v).__name__)


def parse_plan_text(text: str, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a plan.json; {FIX}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal past Python's digit limit
        raise InputError(f"{where}: not JSON ({one_line(exc)[:100]}); {FIX}") from None
    check_fields(doc, where)
    return doc


def read_plan_document(path: str, flag: str = "--plan") -> dict[str, Any]:
    """plan.json, its fields' types checked; every problem is an InputError naming ``flag`` and the path."""
    from .fileio import read_text

    text = read_text(path, flag, FIX)
    return parse_plan_text(text, f"{flag} {one_line(path)}")
