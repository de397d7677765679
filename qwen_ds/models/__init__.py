"""Model specs: presets, config.json loading, closed-form parameter counts."""

from .counts import ParamCounts, count_params
from .registry import load_model, preset_names
from .spec import SUPPORTED_FAMILIES, ModelSpec, spec_from_config

__all__ = ["ModelSpec", "ParamCounts", "SUPPORTED_FAMILIES", "count_params", "load_model", "preset_names",
           "spec_from_config"]
