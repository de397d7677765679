"""Parameter count of any HF decoder by building it on the meta device (needs transformers + torch).

Used for model_types without a closed form, and by the tests to prove the closed forms exact."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import InputError, one_line
from .spec import SUPPORTED_FAMILIES


def build_meta_model(config: Mapping[str, Any]):
    """The AutoModelForCausalLM of ``config`` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)


def meta_param_count(config: Mapping[str, Any], *, where: str = "config") -> int:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise InputError(
            f"{where}: model_type '{config.get('model_type')}' has no closed-form count "
            f"(supported: {', '.join(SUPPORTED_FAMILIES)}); install the [runtime] extra to count it with transformers"
        ) from None
    try:
        model = build_meta_model(config)
    except Exception as exc:  # transformers raises many types for unknown/invalid configs
        raise InputError(
            f"{where}: transformers cannot build model_type '{config.get('model_type')}' ({one_line(exc)[:200]}); "
            f"supported without transformers: {', '.join(SUPPORTED_FAMILIES)}"
        ) from None
    return sum(p.numel() for p in model.parameters())
