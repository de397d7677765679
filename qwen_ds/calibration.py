"""Calibration constants (data/calibration.json): one place, each with the measurement behind it."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

_PATH = Path(__file__).resolve().parent / "data" / "calibration.json"


@lru_cache(maxsize=1)
def _constants() -> dict:
    with open(_PATH, encoding="utf-8") as fh:
        return json.load(fh)["constants"]


def constant(name: str) -> float:
    return _constants()[name]["value"]
