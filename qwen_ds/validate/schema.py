"""JSON Schema check against data/ds_config.schema.json (generated from DeepSpeed 0.19.8's own
pydantic models by scripts/gen_ds_schema.py)."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from .problems import Problem, json_path

_PATH = Path(__file__).resolve().parent.parent / "data" / "ds_config.schema.json"


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    with open(_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def known_top_level_keys() -> frozenset[str]:
    return frozenset(schema()["properties"])


@lru_cache(maxsize=2)
def _validator(inference: bool):
    import jsonschema

    s = schema()
    if inference:
        s = {"$defs": s["$defs"], "$ref": "#/$defs/inference_config"}
    return jsonschema.Draft202012Validator(s)


def _message(err) -> str:
    inst = err.instance
    if err.validator == "type" and isinstance(inst, float) and not math.isfinite(inst):
        return f"{inst} is not a number DeepSpeed accepts here; write a finite value"
    if (err.validator == "type" and isinstance(inst, float) and not inst.is_integer()
            and "integer" in str(err.validator_value)):
        return (f"{inst} is not an integer; DeepSpeed >= 0.15 refuses fractional floats for int fields "
                f"(pydantic int_from_float): write {int(inst)}")
    if err.validator == "additionalProperties":
        return (f"{err.message}; DeepSpeed refuses unknown keys in this block or ignores them silently: check the "
                "spelling")
    if err.validator == "enum":
        return f"{json.dumps(inst)} is not one of {', '.join(json.dumps(v) for v in err.validator_value)}"
    return err.message


def schema_problems(cfg: dict[str, Any], inference: bool) -> list[Problem]:
    out = []
    for err in sorted(_validator(inference).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path))):
        if err.instance == "auto":
            continue  # rule_auto explains these better
        # anyOf/oneOf: report the most specific sub-error
        best = err
        if err.context:
            best = max(err.context, key=lambda e: len(e.absolute_path))
        out.append(Problem(json_path(best.absolute_path), _message(best)[:300], "schema"))
    return out
