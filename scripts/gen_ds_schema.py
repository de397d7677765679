#!/usr/bin/env python3
"""Generate qwen_ds/data/ds_config.schema.json from DeepSpeed's own config classes.

    DS_ACCELERATOR=cpu python scripts/gen_ds_schema.py            # write the schema
    DS_ACCELERATOR=cpu python scripts/gen_ds_schema.py --check    # exit 1 if the file is stale

The root of the schema is the *training* config (the JSON given to deepspeed.initialize);
`$defs/inference_config` is the dict given to deepspeed.init_inference. Validate it with
`{"$defs": schema["$defs"], "$ref": "#/$defs/inference_config"}`.

Pydantic blocks come from `model_json_schema(by_alias=True)` and are post-processed so that
they accept what DeepSpeedConfigModel accepts: extra keys are forbidden, every aliased field
is accepted by its alias or by its field name (not both), deprecated fields carry
`"deprecated": true`. Blocks that DeepSpeed reads by hand (runtime/config.py get_* functions)
are written here from DeepSpeed's constants. Known, deliberate differences from DeepSpeed:
  * DeepSpeedConfigModel silently drops every key whose value is "auto"; the schema rejects
    "auto" where a number or bool is required (qwen-ds never emits "auto").
  * pydantic's lax mode coerces "100" -> 100 and "yes" -> True; the schema wants real types.
  * unknown top-level keys and removed keys are left to qwen-ds's own rules
    (top-level additionalProperties is true; removed keys are listed in "x-removed-keys").
"""
from __future__ import annotations

import argparse
import ast
import copy
import inspect
import json
import logging
import os
import re
import sys
from pathlib import Path
from unittest import mock

DS_VERSION = "0.19.8"
OUT = Path(__file__).resolve().parents[1] / "qwen_ds" / "data" / "ds_config.schema.json"

# DeepSpeed's _REMOVED_*_CONFIG_KEYS map key -> message and carry no version. These keys were
# already in the 0.19.7 sdist's dicts; every other key in 0.19.8's dicts is new in 0.19.8.
REMOVED_IN_0_19_7 = {
    "nebula", "compression_training", "quantize_training", "sparse_attention",
    "zero_optimization.mics_shard_size", "zero_optimization.mics_hierarchical_params_gather",
}

IGNORED_KEYS_NOTE = ("DeepSpeed reads a fixed list of keys here and silently ignores any other key; "
                     "the schema rejects unknown keys so that typos are caught.")

os.environ.setdefault("DS_ACCELERATOR", "cpu")
import pydantic  # noqa: E402
import pydantic.json_schema as pjs  # noqa: E402
import torch  # noqa: E402
from pydantic_core import to_jsonable_python  # noqa: E402

import deepspeed  # noqa: E402
import deepspeed.runtime.lr_schedules  # noqa: E402,F401
import deepspeed.comm as dist  # noqa: E402
from deepspeed.autotuning import constants as AT  # noqa: E402
from deepspeed.comm.config import CommsLoggerConfig  # noqa: E402
from deepspeed.compile.config import CompileConfig  # noqa: E402
from deepspeed.inference import config as infcfg  # noqa: E402
from deepspeed.module_inject import auto_ep_config  # noqa: E402
from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig  # noqa: E402
from deepspeed.profiling import constants as FP  # noqa: E402
from deepspeed.runtime import config as rtcfg  # noqa: E402
from deepspeed.runtime import constants as C  # noqa: E402
from deepspeed.runtime.activation_checkpointing import config as ACT  # noqa: E402
from deepspeed.runtime.data_pipeline import constants as DE  # noqa: E402
from deepspeed.runtime.model_checkpointing import constants as CK  # noqa: E402
from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config  # noqa: E402
from deepspeed.runtime.swap_tensor import aio_config  # noqa: E402
from deepspeed.runtime.tensor_parallel.config import TPTrainingConfig  # noqa: E402
from deepspeed.runtime.zenflow.zenflow_config import ZenFlowConfig  # noqa: E402
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig  # noqa: E402
from deepspeed.runtime.zero.leaf_module_config import DeepSpeedZeroLeafModuleConfig  # noqa: E402
from deepspeed.utils.config import DeepSpeedThroughputTimerConfig  # noqa: E402

ROOT_MODELS = [
    DeepSpeedZeroConfig, DeepSpeedBF16Config, DeepSpeedFP16Config, CommsLoggerConfig, TensorBoardConfig,
    WandbConfig, CSVConfig, CometConfig, CompileConfig, TPTrainingConfig, rtcfg.HybridEngineConfig,
    infcfg.WeightQuantConfig, DeepSpeedThroughputTimerConfig, infcfg.DeepSpeedInferenceConfig
]


def ref(model) -> dict:
    return {"$ref": f"#/$defs/{model.__name__}"}


def ci_enum(values) -> dict:
    """A string DeepSpeed compares after .lower()/.upper(): match any casing of `values`."""
    alts = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in v) for v in values]
    return {"type": "string", "pattern": "^(?:" + "|".join(alts) + ")$", "examples": list(values)}


def scalar(default, types=None, **kw) -> dict:
    """Schema for a hand-read scalar; its JSON type follows DeepSpeed's default unless given."""
    if types is None:
        types = {bool: "boolean", int: "integer", float: "number", str: "string"}[type(default)]
    return {"type": types, "default": default, **kw}


def strict_block(props: dict, description: str = "", **kw) -> dict:
    return {"type": "object", "properties": props, "additionalProperties": False,
            "x-deepspeed-ignores-unknown-keys": True,
            "description": (description + " " + IGNORED_KEYS_NOTE).strip(), **kw}


def constants_block(mod, prefix: str, block_key: str) -> dict:
    """{key: default} for every NAME / NAME_DEFAULT pair in a DeepSpeed constants module."""
    out = {}
    for name in dir(mod):
        if name.startswith(prefix) and hasattr(mod, name + "_DEFAULT"):
            key = getattr(mod, name)
            if isinstance(key, str) and key != block_key:
                out[key] = getattr(mod, name + "_DEFAULT")
    return out


def dtype_strings(enum) -> list[str]:
    vals = [v for m in enum for v in getattr(m, "_all_values", m.value) if isinstance(v, str)]
    return list(dict.fromkeys(vals))


# ---------------------------------------------------------------- pydantic models -> JSON Schema

INFERENCE_DTYPES = dtype_strings(infcfg.DtypeEnum)   # init_inference(dtype=...) strings
TRAINING_DTYPES = dtype_strings(rtcfg.DtypeEnum)     # torch_autocast / data_types strings

# Cross-field model_validators of the pydantic models, written as JSON Schema conditionals.
MODEL_RULES = {
    DeepSpeedZeroConfig: [
        {"description": "compute_grad_norm=false is supported only with ZeRO stage 1 or 2",
         "if": {"required": ["compute_grad_norm"], "properties": {"compute_grad_norm": {"const": False}}},
         "then": {"required": ["stage"], "properties": {"stage": {"enum": [1, 2]}}}},
        {"description": "offload_optimizer.ratio < 1 (partial offload) needs ZeRO stage 3",
         "if": {"required": ["offload_optimizer"], "properties": {"offload_optimizer": {
             "type": "object", "required": ["ratio"], "properties": {"ratio": {"exclusiveMaximum": 1}}}}},
         "then": {"required": ["stage"], "properties": {"stage": {"const": 3}}}},
    ],
    DeepSpeedFP16Config: [
        {"description": "dynamic loss scaling (enabled, loss_scale 0) needs loss_scale_window > 0 "
                        "and min_loss_scale > 0",
         "if": {"required": ["enabled"], "properties": {"enabled": {"const": True},
                                                       "loss_scale": {"const": 0}}},
         "then": {"properties": {"loss_scale_window": {"exclusiveMinimum": 0},
                                 "min_loss_scale": {"exclusiveMinimum": 0}}}},
    ],
}

# Fields whose validators accept more (or less) than their annotation says.
FIELD_OVERRIDES = {
    (infcfg.DeepSpeedInferenceConfig, "dtype"): {
        "type": "string", "enum": INFERENCE_DTYPES, "default": "fp16",
        "description": "validate_dtype maps these strings to a torch.dtype"},
    (DeepSpeedFP16Config, "loss_scale"): {
        "type": "number", "minimum": 0, "default": 0, "description": "0 = dynamic loss scaling"},
    (ZenFlowConfig, "select_strategy"): {"enum": ["auto", "step", "epoch"], "default": "auto"},
    (ZenFlowConfig, "select_interval"): {"anyOf": [{"const": "auto"}, {"type": "integer"}], "default": "auto"},
    (ZenFlowConfig, "update_interval"): {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}],
                                         "default": "auto"},
    **{(DeepSpeedZeroLeafModuleConfig, k): {
        "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
        "description": "a single string is wrapped into a list"} for k in ("classes", "names", "name_suffixes")},
}


class DSJsonSchema(pjs.GenerateJsonSchema):
    """pydantic's generator, taught about torch.dtype/object fields and DeepSpeedConfigModel."""

    def is_instance_schema(self, schema):
        cls = schema["cls"]
        if cls is torch.dtype:
            return {"not": {}, "x-python-type": "torch.dtype",
                    "description": "DeepSpeed accepts only a torch.dtype object here (set it from Python); "
                                   "no JSON value passes its isinstance check"}
        return {"x-python-type": f"{cls.__module__}.{cls.__qualname__}"}

    def encode_default(self, dft):
        try:
            return super().encode_default(dft)
        except Exception:  # torch.float16 and other Python objects
            return str(dft)

    def model_schema(self, schema):
        js = super().model_schema(schema)
        cls = schema["cls"]
        props = js.get("properties", {})
        js["x-deepspeed-class"] = f"{cls.__module__}.{cls.__qualname__}"
        for name, field in cls.model_fields.items():
            key = field.alias or name
            p = props[key]
            p.pop("title", None)
            if (cls, name) in FIELD_OVERRIDES:
                p = props[key] = {k: v for k, v in p.items() if k in ("deprecated",)} | FIELD_OVERRIDES[(cls, name)]
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            if extra.get("deprecated"):
                for k in ("new_param_fn", "set_new_param", "new_param", "deprecated_msg"):
                    p.pop(k, None)
                note = "Deprecated" + (f"; use {extra['new_param']}" if extra.get("new_param") else "")
                p["description"] = note + (f". {extra['deprecated_msg']}" if extra.get("deprecated_msg") else "")
                p["deprecated"] = True
            if field.alias and field.alias != name:  # populate_by_name: the field name works too, not both
                props[name] = copy.deepcopy(p)
                props[name]["description"] = (f"Field name of '{key}' (DeepSpeed accepts either, not both). "
                                              + p.get("description", "")).strip()
                js.setdefault("dependentSchemas", {})[key] = {"properties": {name: {
                    "not": {}, "description": f"'{key}' and '{name}' name the same field; give only one"}}}
        js["additionalProperties"] = False  # extra="forbid"
        if cls in MODEL_RULES:
            js["allOf"] = MODEL_RULES[cls]
        return js


def pydantic_defs() -> dict:
    # json_schema_extra of deprecated fields holds lambdas (new_param_fn): serialise them as null.
    lenient = lambda v, **kw: to_jsonable_python(v, fallback=lambda _: None, **kw)  # noqa: E731
    with mock.patch.object(pjs, "to_jsonable_python", lenient):
        _, top = pjs.models_json_schema([(m, "validation") for m in ROOT_MODELS], by_alias=True,
                                        schema_generator=DSJsonSchema, ref_template="#/$defs/{model}")
    return top["$defs"]


SIMPLE_KEYS = {"type", "additionalProperties", "items", "format", "minimum", "maximum",
               "exclusiveMinimum", "exclusiveMaximum", "pattern", "minLength", "maxLength"}


def tidy(node):
    """Rewrite pydantic's anyOf unions so errors point at the deepest bad key.

    anyOf[{$ref}, {type: null}] becomes if/else; anyOf of plain types becomes a type list.
    Both rewrites accept exactly the same instances as the original union.
    """
    if isinstance(node, list):
        return [tidy(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: tidy(v) for k, v in node.items()}
    if isinstance(node.get("enum"), list):  # ZeroStageEnum lists 3 twice (max_stage is an alias of weights)
        node["enum"] = [v for i, v in enumerate(node["enum"]) if v not in node["enum"][:i]]
    branches = node.get("anyOf")
    if not branches:
        return node
    refs = [b for b in branches if set(b) == {"$ref"}]
    plain = [b for b in branches if b not in refs and set(b) <= SIMPLE_KEYS and isinstance(b.get("type"), str)]
    if len(refs) + len(plain) != len(branches) or len({b["type"] for b in plain}) != len(plain):
        return node
    if {"integer", "number"} <= {b["type"] for b in plain} or len(refs) > 1:
        return node
    merged = {}
    for b in plain:
        merged.update({k: v for k, v in b.items() if k != "type"})
    types = [b["type"] for b in plain]
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if not refs:
        return rest | merged | {"type": types if len(types) > 1 else types[0]}
    if any(set(b) != {"type"} for b in plain):
        return node
    return rest | {"if": {"type": types if len(types) > 1 else types[0]}, "else": refs[0]}


# ---------------------------------------------------------------- hand-read blocks (runtime/config.py)

def activation_checkpointing() -> dict:
    props = {k: scalar(v) if v is not None else {"type": ["integer", "null"], "minimum": 0, "default": None}
             for k, v in ACT.ACT_CHKPT_DEFAULT.items()}
    return strict_block(props, "DeepSpeedActivationCheckpointingConfig (activation_checkpointing/config.py). "
                               "Note: its own format string spells 'partitioned_activations', which is ignored.")


def pipeline() -> dict:
    d = rtcfg.get_pipeline_config({})
    props = {
        "stages": {"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": 1}], "default": d["stages"],
                   "description": "parsed but never read; the stage count comes from PipelineModule(num_stages=...)"},
        "partition": {"type": "string", "default": d["partition"],
                      "description": "parsed but never read; use PipelineModule(partition_method=...)"},
        "seed_layers": scalar(d["seed_layers"], description="parsed but never read"),
        "activation_checkpoint_interval": scalar(d["activation_checkpoint_interval"], minimum=0),
        "pipe_partitioned": scalar(d["pipe_partitioned"]),
        "grad_partitioned": scalar(d["grad_partitioned"]),
        "use_reentrant": scalar(True, description="read by runtime/pipe/engine.py; None means True"),
    }
    assert set(props) >= set(d), f"pipeline defaults changed: {sorted(d)}"
    return strict_block(props, "get_pipeline_config (runtime/config.py) + runtime/pipe/engine.py. "
                               "The pipeline engine asserts ZeRO stage < 2.")


def aio() -> dict:
    props = {k: scalar(v) for k, v in aio_config.AIO_DEFAULT_DICT.items()}
    props["use_gds"]["description"] = "asserts the accelerator is CUDA"
    block = strict_block(props, "get_aio_config (runtime/swap_tensor/aio_config.py); null means defaults.")
    block["type"] = ["object", "null"]
    return block


def flops_profiler() -> dict:
    d = constants_block(FP, "FLOPS_PROFILER_", FP.FLOPS_PROFILER)
    props = {k: scalar(v) if v is not None else {"type": ["string", "null"], "default": None} for k, v in d.items()}
    return strict_block(props, "DeepSpeedFlopsProfilerConfig (profiling/config.py); enabled also turns on "
                               "wall_clock_breakdown.")


def autotuning() -> dict:
    d = constants_block(AT, "AUTOTUNING_", AT.AUTOTUNING)
    props = {}
    for k, v in d.items():
        props[k] = scalar(v) if v is not None else {"default": None}
    props[AT.AUTOTUNING_METRIC_PATH] = {"type": ["string", "null"], "default": None}
    props[AT.AUTOTUNING_MODEL_INFO_PATH] = {"type": ["string", "null"], "default": None}
    props[AT.AUTOTUNING_ARG_MAPPINGS] = {"type": ["object", "null"], "default": None}
    props[AT.AUTOTUNING_MAX_TRAIN_BATCH_SIZE] = {"type": ["integer", "null"], "default": None}
    props[AT.AUTOTUNING_TUNER_TYPE]["enum"] = [AT.AUTOTUNING_TUNER_GRIDSEARCH, AT.AUTOTUNING_TUNER_RANDOM,
                                               AT.AUTOTUNING_TUNER_MODELBASED]
    props[AT.MODEL_INFO] = {"type": ["object", "null"], "properties": {
        k: (scalar(v) if v is not None else {"type": ["integer", "null"]})
        for k, v in AT.MODEL_INFO_KEY_DEFAULT_DICT.items()}}
    for k in (AT.AUTOTUNING_RESULTS_DIR, AT.AUTOTUNING_EXPS_DIR):
        props[k]["minLength"] = 1  # asserted non-empty
    return {"type": "object", "properties": props,
            "description": "DeepSpeedAutotuningConfig (autotuning/config.py); used by the `deepspeed --autotuning` "
                           "launcher. Left open: the autotuner also passes this block through."}


def checkpoint() -> dict:
    writer = strict_block({
        CK.CHECKPOINT_WRITER_TYPE: ci_enum(CK.CHECKPOINT_WRITER_TYPES) | {"default": CK.CHECKPOINT_WRITER_TYPE_DEFAULT},
        CK.CHECKPOINT_IO_BUFFER_SIZE: scalar(CK.CHECKPOINT_IO_BUFFER_SIZE_DEFAULT),
        CK.CHECKPOINT_IO_BUFFER_DOUBLE: scalar(CK.CHECKPOINT_IO_BUFFER_DOUBLE_DEFAULT),
        CK.CHECKPOINT_IO_STATISTICS: scalar(CK.CHECKPOINT_IO_STATISTICS_DEFAULT),
        CK.CHECKPOINT_DATA_PARALLEL: {"anyOf": [{"type": "null"}, ci_enum(CK.CHECKPOINT_DATA_PARALLEL_UNITS)],
                                      "default": None},
        CK.CHECKPOINT_WRITER_DECOUPLED: scalar(CK.CHECKPOINT_WRITER_DECOUPLED_DEFAULT),
        CK.CHECKPOINT_IO_MULTIPLIER: scalar(CK.CHECKPOINT_IO_MULTIPLIER_DEFAULT),
    }, "get_checkpoint_writer_config (runtime/model_checkpointing/config.py); null = no writer.")
    writer["type"] = ["object", "null"]
    props = {
        C.CHECKPOINT_TAG_VALIDATION: ci_enum(C.CHECKPOINT_TAG_VALIDATION_MODES)
        | {"default": C.CHECKPOINT_TAG_VALIDATION_DEFAULT},
        C.LOAD_UNIVERSAL_CHECKPOINT: scalar(C.LOAD_UNIVERSAL_CHECKPOINT_DEFAULT),
        C.USE_NODE_LOCAL_STORAGE_CHECKPOINT: scalar(C.USE_NODE_LOCAL_STORAGE_CHECKPOINT_DEFAULT),
        C.CHECKPOINT_PARALLEL_WRITE: strict_block({C.CHECKPOINT_PARALLEL_WRITE_PIPELINE_STAGE: scalar(
            C.CHECKPOINT_PARALLEL_WRITE_PIPELINE_STAGE_DEFAULT)}, "get_checkpoint_parallel_write_pipeline."),
        CK.CHECKPOINT_SERIALIZATION: scalar(CK.CHECKPOINT_SERIALIZATION_DEFAULT),
        CK.CHECKPOINT_WRITER: writer,
    }
    return strict_block(props, "get_checkpoint_params / get_checkpoint_config (runtime/config.py, "
                               "runtime/model_checkpointing/config.py).")


def data_types() -> dict:
    dt = {"anyOf": [{"type": "null"}, {"type": "string", "enum": TRAINING_DTYPES}], "default": None}
    props = {C.GRAD_ACCUM_DTYPE: dt, C.PARAM_DTYPE: dt, C.BUFFER_DTYPE: dt,
             C.KEEP_IN_FP32_MODULES: {"anyOf": [{"const": "auto"}, {"type": "array", "items": {"type": "string"}}],
                                      "default": C.KEEP_IN_FP32_MODULES_DEFAULT}}
    return strict_block(props, "get_data_types_params (runtime/config.py); dtype strings go through "
                               "runtime.config.DtypeEnum at engine time.")


def torch_autocast() -> dict:
    return strict_block({
        C.TORCH_AUTOCAST_ENABLED: scalar(C.TORCH_AUTOCAST_ENABLED_DEFAULT),
        C.TORCH_AUTOCAST_DTYPE: {"type": "string", "enum": TRAINING_DTYPES},
        C.TORCH_AUTOCAST_LOWER_PRECISION_SAFE_MODULES: {"type": "array", "items": {"type": "string"}},
    }, "get_torch_autocast_* (runtime/config.py).")


def expert_parallel() -> dict:
    """Keys and defaults of parse_autoep_config, read from its source (AutoEP checks types itself)."""
    props = {}
    for node in ast.walk(ast.parse(inspect.getsource(auto_ep_config.parse_autoep_config))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args:
            key, default = ast.literal_eval(node.args[0]), ast.literal_eval(node.args[1])
            props[key] = {"default": default} | ({"type": "boolean"} if isinstance(default, bool) else {})
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In) and isinstance(node.left, ast.Constant):
            props.setdefault(node.left.value, {})
    props["load_balance_coeff"] = {"type": "null", "description": "any non-null value is rejected (unsupported)"}
    return strict_block(props, "parse_autoep_config (module_inject/auto_ep_config.py); validated again by "
                               "validate_autoep_config when the engine starts.")


def data_efficiency() -> dict:
    sampling = {"type": "object", "properties": {
        DE.DATA_SAMPLING_ENABLED: scalar(DE.DATA_SAMPLING_ENABLED_DEFAULT),
        DE.DATA_SAMPLING_NUM_EPOCHS: scalar(DE.DATA_SAMPLING_NUM_EPOCHS_DEFAULT),
        DE.DATA_SAMPLING_NUM_WORKERS: scalar(DE.DATA_SAMPLING_NUM_WORKERS_DEFAULT),
        DE.DATA_SAMPLING_PIN_MEMORY: scalar(DE.DATA_SAMPLING_PIN_MEMORY_DEFAULT),
        DE.CURRICULUM_LEARNING: {"type": "object", "properties": {
            DE.CURRICULUM_LEARNING_ENABLED: scalar(DE.CURRICULUM_LEARNING_ENABLED_DEFAULT)}},
        DE.DYNAMIC_BATCHING: {"type": "object"}}}
    routing = {"type": "object", "properties": {
        DE.DATA_ROUTING_ENABLED: scalar(DE.DATA_ROUTING_ENABLED_DEFAULT),
        DE.RANDOM_LTD: {"type": "object",
                        "properties": {DE.RANDOM_LTD_ENABLED: scalar(DE.RANDOM_LTD_ENABLED_DEFAULT)}}}}
    return {"type": "object", "description": "get_data_efficiency_config (runtime/data_pipeline/config.py). "
                                             "Left open: sub-blocks are passed through to the data pipeline.",
            "properties": {DE.DATA_EFFICIENCY_ENABLED: scalar(DE.DATA_EFFICIENCY_ENABLED_DEFAULT),
                           DE.DATA_EFFICIENCY_SEED: scalar(DE.DATA_EFFICIENCY_SEED_DEFAULT),
                           DE.DATA_SAMPLING: sampling, DE.DATA_ROUTING: routing}}


def top_level_properties() -> dict:
    pos_int_or_null = {"type": ["integer", "null"], "exclusiveMinimum": 0, "default": None}
    comm_dtype = {"anyOf": [{"type": "null"}, ci_enum(["fp16", "bf16", "fp32"])]}
    return {
        # batch (runtime/config.py _set_batch_related_parameters / _batch_assertion)
        C.TRAIN_BATCH_SIZE: pos_int_or_null
        | {"description": "= train_micro_batch_size_per_gpu * gradient_accumulation_steps * data-parallel size"},
        C.TRAIN_MICRO_BATCH_SIZE_PER_GPU: dict(pos_int_or_null),
        C.GRADIENT_ACCUMULATION_STEPS: dict(pos_int_or_null),
        C.MANAGED_GRADIENT_ACCUMULATION: scalar(C.MANAGED_GRADIENT_ACCUMULATION_DEFAULT),
        # scalars read with get_scalar_param
        C.STEPS_PER_PRINT: {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                            "description": "integer in practice; accelerate sets inf"},
        C.DUMP_STATE: scalar(C.DUMP_STATE_DEFAULT),
        C.DISABLE_PYTHON_GC: scalar(C.DISABLE_PYTHON_GC_DEFAULT),
        C.DISABLE_ALLGATHER: scalar(C.DISABLE_ALLGATHER_DEFAULT),
        C.COMMUNICATION_DATA_TYPE: comm_dtype | {"default": C.COMMUNICATION_DATA_TYPE_DEFAULT},
        C.SEQ_PARALLEL_COMMUNICATION_DATA_TYPE: comm_dtype
        | {"default": C.SEQ_PARALLEL_COMMUNICATION_DATA_TYPE_DEFAULT},
        C.PRESCALE_GRADIENTS: scalar(C.PRESCALE_GRADIENTS_DEFAULT),
        C.GRADIENT_PREDIVIDE_FACTOR: scalar(C.GRADIENT_PREDIVIDE_FACTOR_DEFAULT),
        C.GRADIENT_ALLREDUCE_OP: ci_enum(C.GRADIENT_ALLREDUCE_OP_SUPPORTED)
        | {"default": C.GRADIENT_ALLREDUCE_OP_DEFAULT,
           "description": "'sum' is rejected with ZeRO-3, ZenFlow, DeepCompile"},
        C.GRADIENT_CLIPPING: scalar(C.GRADIENT_CLIPPING_DEFAULT, description="0 disables clipping"),
        C.ZERO_ALLOW_UNTESTED_OPTIMIZER: scalar(C.ZERO_ALLOW_UNTESTED_OPTIMIZER_DEFAULT),
        C.ZERO_FORCE_DS_CPU_OPTIMIZER: scalar(C.ZERO_FORCE_DS_CPU_OPTIMIZER_DEFAULT),
        C.WALL_CLOCK_BREAKDOWN: scalar(C.WALL_CLOCK_BREAKDOWN_DEFAULT),
        C.MEMORY_BREAKDOWN: scalar(C.MEMORY_BREAKDOWN_DEFAULT),
        C.DATALOADER_DROP_LAST: scalar(C.DATALOADER_DROP_LAST_DEFAULT),
        C.USE_DATA_BEFORE_EXPERT_PARALLEL: scalar(C.USE_DATA_BEFORE_EXPERT_PARALLEL_DEFAULT),
        C.VOCABULARY_SIZE: {"type": ["integer", "null"], "default": None, "description": "only warns if not % 8"},
        C.LOG_LEVEL: {"anyOf": [{"type": "null"}, ci_enum(["debug", "info", "warning", "error", "critical"])],
                      "default": None},
        "sequence_parallel_size": {"type": "integer", "minimum": 1,
                                   "description": "Ulysses SP degree; divides the data-parallel size"},
        "data_parallel_size": {"type": "integer", "minimum": 1,
                               "description": "with sequence_parallel_size: builds the DP x SP mesh "
                                              "(deepspeed.initialize)"},
        # optimizer / scheduler: get_optimizer_* / get_scheduler_*
        C.OPTIMIZER: strict_block({
            C.TYPE: {"type": ["string", "null"], "examples": rtcfg.DEEPSPEED_OPTIMIZERS,
                     "description": "DeepSpeed optimizer (case-insensitive) or a torch.optim class name"},
            C.OPTIMIZER_PARAMS: {"type": "object", "description": "keyword arguments of the optimizer"},
            C.LEGACY_FUSION: scalar(C.LEGACY_FUSION_DEFAULT)}, "get_optimizer_name / get_optimizer_params."),
        C.SCHEDULER: strict_block({
            C.TYPE: {"type": ["string", "null"], "examples": deepspeed.runtime.lr_schedules.VALID_LR_SCHEDULES,
                     "description": "deepspeed.runtime.lr_schedules name or a torch.optim.lr_scheduler class name"},
            C.SCHEDULER_PARAMS: {"type": "object", "description": "keyword arguments of the scheduler"}},
            "get_scheduler_name / get_scheduler_params."),
        # pydantic blocks
        "zero_optimization": {"if": {"type": "boolean"},
                              "then": {"description": "deprecated form: true = stage 1, false = stage 0"},
                              "else": ref(DeepSpeedZeroConfig)},
        "allgather_size": {"type": "integer", "minimum": 0, "deprecated": True,
                           "description": "read only with the deprecated boolean zero_optimization"},
        C.BFLOAT16: ref(DeepSpeedBF16Config),
        C.BFLOAT16_OLD: ref(DeepSpeedBF16Config)
        | {"deprecated": True, "description": "legacy name of bf16; ignored when bf16 is present"},
        C.FP16: ref(DeepSpeedFP16Config),
        "comms_logger": ref(CommsLoggerConfig),
        "tensorboard": ref(TensorBoardConfig),
        "wandb": ref(WandbConfig),
        "csv_monitor": ref(CSVConfig),
        "comet": ref(CometConfig),
        "compile": ref(CompileConfig),
        "tensor_parallel": ref(TPTrainingConfig),
        "hybrid_engine": ref(rtcfg.HybridEngineConfig),
        "weight_quantization": ref(infcfg.WeightQuantConfig),
        "timers": strict_block({"throughput": ref(DeepSpeedThroughputTimerConfig)}, "get_timers_config."),
        # hand-read blocks
        ACT.ACT_CHKPT: activation_checkpointing(),
        "pipeline": pipeline(),
        aio_config.AIO: aio(),
        FP.FLOPS_PROFILER: flops_profiler(),
        AT.AUTOTUNING: autotuning(),
        C.CHECKPOINT: checkpoint(),
        C.DATA_TYPES: data_types(),
        C.TORCH_AUTOCAST: torch_autocast(),
        rtcfg.EXPERT_PARALLEL: expert_parallel(),
        DE.DATA_EFFICIENCY: data_efficiency(),
        "datastates_ckpt": {"description": "DataStates-LLM checkpointing: any value except false enables it and is "
                                           "passed to the datastates library"},
    }


# ---------------------------------------------------------------- cross-checks against DeepSpeed itself

def traced_top_level_keys() -> set[str]:
    """Every top-level key DeepSpeedConfig looks up, found by running it on a recording dict."""
    seen = set()

    class Keys:
        def __init__(self, d):
            self.d = d

        def __contains__(self, k):
            seen.add(k)
            return dict.__contains__(self.d, k)

        def __iter__(self):
            return iter(dict.keys(self.d))

    class Recorder(dict):
        def __getitem__(self, k):
            seen.add(k)
            return super().__getitem__(k)

        def get(self, k, *a):
            seen.add(k)
            return super().get(k, *a)

        def __contains__(self, k):
            seen.add(k)
            return super().__contains__(k)

        def keys(self):
            return Keys(self)

        def __copy__(self):
            return self

    logger, level = deepspeed.utils.logger, deepspeed.utils.logger.level
    logger.setLevel(logging.ERROR)  # the boolean zero_optimization form logs a long format string
    try:
        with mock.patch.object(dist, "get_rank", return_value=0), \
                mock.patch.object(dist, "get_world_size", return_value=8):
            for cfg in ({"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1},
                        {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 1, "zero_optimization": True}):
                rtcfg.DeepSpeedConfig(Recorder(cfg))
    finally:
        logger.setLevel(level)
    return seen


def self_check(props: dict, removed: dict) -> None:
    problems = []
    missing = traced_top_level_keys() - set(props) - set(removed)
    if missing:
        problems.append(f"DeepSpeedConfig reads top-level keys the schema lacks: {sorted(missing)}")
    for s in INFERENCE_DTYPES:
        try:
            infcfg.DeepSpeedInferenceConfig(dtype=s)
        except Exception as e:  # noqa: BLE001
            problems.append(f"inference dtype {s!r} rejected by DeepSpeed: {e}")
    try:
        TPTrainingConfig(dtype="bf16")
        problems.append("TPTrainingConfig now accepts dtype strings: update is_instance_schema")
    except pydantic.ValidationError:
        pass
    if DeepSpeedZeroLeafModuleConfig(classes="a").classes != ["a"]:
        problems.append("leaf_module no longer wraps a string into a list")
    if problems:
        sys.exit("gen_ds_schema: " + "\n  ".join(problems))


def removed_keys() -> tuple[dict, dict]:
    paths = {k: m for k, m in rtcfg._REMOVED_TOP_LEVEL_CONFIG_KEYS.items()}
    paths |= {f"zero_optimization.{k}": m for k, m in rtcfg._REMOVED_ZERO_CONFIG_KEYS.items()}
    unknown = REMOVED_IN_0_19_7 - set(paths)
    if unknown:
        sys.exit(f"gen_ds_schema: REMOVED_IN_0_19_7 names keys DeepSpeed no longer lists: {sorted(unknown)}")
    versions = {p: "0.19.7" if p in REMOVED_IN_0_19_7 else deepspeed.__version__ for p in paths}
    return versions, paths


def build() -> dict:
    if deepspeed.__version__ != DS_VERSION:
        sys.exit(f"gen_ds_schema: DeepSpeed {deepspeed.__version__} is installed; this schema is for {DS_VERSION}")
    defs = pydantic_defs()
    props = top_level_properties()
    versions, messages = removed_keys()
    self_check(props, versions)
    top_removed = [p for p in versions if "." not in p]
    clash = set(top_removed) & set(props)
    assert not clash, f"removed keys listed as properties: {clash}"
    defs["inference_config"] = {"$ref": "#/$defs/DeepSpeedInferenceConfig",
                                "description": "deepspeed.init_inference(model, config=...) dict "
                                               "(DeepSpeedInferenceConfig); unknown keys are rejected"}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (f"Generated by scripts/gen_ds_schema.py from DeepSpeed {DS_VERSION}'s config classes "
                     "(pydantic {}, torch {}). Do not edit; rerun the script.".format(pydantic.VERSION,
                                                                                     torch.__version__)),
        "title": f"DeepSpeed {DS_VERSION} training config (deepspeed.initialize)",
        "description": ("Top-level keys DeepSpeed does not read are ignored by DeepSpeed, so the schema allows "
                        "them; qwen-ds reports them. Removed keys (x-removed-keys) make DeepSpeed raise "
                        "DeepSpeedConfigError. DeepSpeed's pydantic blocks silently drop any key whose value is "
                        "\"auto\"; this schema rejects \"auto\" where a number or bool is expected."),
        "type": "object",
        "properties": props,
        "additionalProperties": True,
        "x-deepspeed-version": DS_VERSION,
        "x-removed-keys": versions,
        "x-removed-keys-messages": messages,
        "$defs": defs,
    }
    return tidy(schema)


def render(schema: dict) -> str:
    return json.dumps(schema, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from a fresh generation")
    args = ap.parse_args(argv)
    text = render(build())
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run scripts/gen_ds_schema.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
