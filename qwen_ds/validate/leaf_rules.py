"""Rule for ``zero_optimization.leaf_module``: under ZeRO-3 an MoE model's sparse MoE blocks must be leaf
modules, gathered whole when entered, or ZeRO-3 fetches the router and experts submodule by submodule in
an order that follows which experts each rank's tokens hit (the ZeRO-3 MoE hangs and slowdowns reported
by LLaMA-Factory, open-r1 and ms-swift users).

DeepSpeed 0.19.8 (runtime/zero/leaf_module_config.py, utils/z3_leaf_module.py, applied by
engine._configure_distributed_model): ``leaf_module`` has ``classes`` (class name or module.qualname),
``names`` (exact named_modules() paths) and ``name_suffixes``; a string is wrapped into a list. Without
the key, or without ``classes``, the classes default to Mixtral's, Qwen2-MoE's and Qwen3-MoE's sparse MoE
blocks; a ``classes`` list replaces those defaults. No torch here.
"""

from __future__ import annotations

import json
from typing import Any

from ..models.spec import MOE, ModelSpec
from ..sharding import zero3_leaf_classes
from .problems import Context, Problem

#: DeepSpeed 0.19.8 DEFAULT_LEAF_MODULE_CLASSES (runtime/zero/leaf_module_config.py:11)
DS_DEFAULT_LEAF_CLASSES = (
    "transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock",
    "transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock",
    "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock",
)


def _strings(value: Any, default: tuple[str, ...] | list[str]) -> list[str] | None:
    """A leaf_module field as DeepSpeed reads it (absent -> default, a string -> [string]); None if malformed
    (the JSON schema reports that)."""
    if value is None:
        return list(default)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _moe_block_paths(s: ModelSpec) -> list[str]:
    """named_modules() paths of the MoE blocks in the *ForCausalLM model (model.layers.<i>.mlp)."""
    layers = [i for i, kind in enumerate(s.mlp_types) if kind == MOE] if s.closed_form else range(s.num_layers)
    return [f"model.layers.{i}.mlp" for i in layers]


def _class_matches(entry: str, family: str, name: str) -> bool:
    """DeepSpeed's match: the instance's class __name__ or its module.qualname equals the entry."""
    return entry in (name, f"transformers.models.{family}.modeling_{family}.{name}")


def rule_leaf_modules(cfg: dict[str, Any], ctx: Context) -> list[Problem]:
    """A ZeRO-3 config (training or ZeRO-Inference, both go through deepspeed.initialize) for an MoE model
    whose effective leaf_module entries do not cover every MoE block of the model: a warning naming the
    JSON to add."""
    z = cfg.get("zero_optimization")
    if ctx.model is None or not isinstance(z, dict) or z.get("stage") != 3:
        return []
    wanted = zero3_leaf_classes(ctx.model)
    if not wanted:
        return []
    leaf = z.get("leaf_module")
    if leaf is not None and not isinstance(leaf, dict):
        return []  # not an object: the schema check reports it
    leaf = leaf or {}
    classes = _strings(leaf.get("classes"), DS_DEFAULT_LEAF_CLASSES)
    names = _strings(leaf.get("names"), [])
    suffixes = _strings(leaf.get("name_suffixes"), [])
    if classes is None or names is None or suffixes is None:
        return []
    family = ctx.model.family
    missing = [c for c in wanted if not any(_class_matches(e, family, c) for e in classes)]
    if not missing:
        return []
    paths = _moe_block_paths(ctx.model)
    if paths and all(p in names or any(p.endswith(sfx) for sfx in suffixes) for p in paths):
        return []  # every MoE block named by path or suffix
    if "classes" in leaf:
        fix = {"classes": classes + missing}
        why = (f"zero_optimization.leaf_module.classes {json.dumps(classes)} replaces DeepSpeed's default leaf "
               f"classes and does not name {', '.join(missing)}")
    else:
        fix = {**leaf, "classes": list(missing)}
        why = (f"{', '.join(missing)} is not among DeepSpeed 0.19.8's default leaf classes (Mixtral, Qwen2-MoE and "
               "Qwen3-MoE sparse MoE blocks) and the config has no zero_optimization.leaf_module.classes")
    return [Problem("$.zero_optimization.leaf_module",
                    f"ZeRO-3 with {ctx.model.name} ({family}): {why}, so its MoE blocks are no ZeRO-3 leaf modules and "
                    "are gathered submodule by submodule in an order that follows each rank's routing (ZeRO-3 MoE "
                    f"training hangs or crawls); set in zero_optimization: \"leaf_module\": {json.dumps(fix)}",
                    "leaf_modules", "warning")]
