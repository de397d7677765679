"""plan.json: the typed document gen-config writes and launch, validate, the runtime and the
benchmarks read. ``PlanDocument`` is the only code that reads or writes the file's JSON shape;
readers take typed fields (``doc.workload.seq_len``, ``doc.plan.loss``), so each default lives once,
in ``Workload`` / ``Plan``.

Every field may be absent (a plan.json from an older qwen-ds, or made by hand): an absent section
reads as ``None`` (model, cluster, memory) or as the planner's defaults (workload, plan). A field
that is present must have its type: a wrong one is one line naming the field (exit 2), not a
traceback in whichever reader touched it first. A plan.json of a newer schema is refused.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .consumers import CONSUMERS
from .errors import InputError, one_line
from .pairing import CONFIG_KEY, DIGEST_KEY, PairCheck, check_pair
from .models.finetune import FINETUNE_METHODS
from .knobs import ALLOCATORS, INFER_PRECISIONS, KERNELS, LOSS_PATHS, MODES, OFFLOAD, Plan, Workload

#: 1: the first typed document (gen-config of qwen-ds 0.1.0 after #12); files without the key are
#: the untyped plan.json of before, read the same way (their extra ``memory.plan`` copy is ignored)
SCHEMA_VERSION = 1
FIX = "pass the plan.json gen-config wrote, or regenerate it"


def deepspeed_version() -> str:
    """The installed DeepSpeed's version, else the version the shipped config schema was built from."""
    from importlib import metadata

    try:
        return metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        from .validate.schema import schema

        return str(schema().get("x-deepspeed-version", "unknown"))


@dataclass(frozen=True)
class ModelRef:
    """The model a plan was made for; ``config`` is its config.json, enough to rebuild it."""

    name: str = "model"
    family: str | None = None
    source: str | None = None
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class ClusterRef:
    gpu: str | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    world_size: int | None = None
    hostfile: str | None = None


@dataclass(frozen=True)
class PlannedMemory:
    """What the estimator predicted for the plan, per GPU and per node (bytes)."""

    total_params: int | None = None
    active_params: int | None = None
    gpu_memory_bytes: int | None = None
    gpu_allocated_bytes: int | None = None
    gpu_reserved_bytes: int | None = None
    gpu_total_bytes: int | None = None
    peak_phase: str | None = None
    cpu_total_bytes_per_node: int | None = None
    nvme_total_bytes_per_node: int | None = None
    fits: bool | None = None
    terms: dict[str, int] = field(default_factory=dict)
    term_phases: dict[str, str] = field(default_factory=dict)
    cpu_terms: dict[str, int] = field(default_factory=dict)
    nvme_terms: dict[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, total_params: int, active_params: int, b: Any) -> "PlannedMemory":
        """From an estimator MemoryBreakdown and the model's parameter counts."""
        return cls(total_params=total_params, active_params=active_params, gpu_memory_bytes=b.gpu_memory_bytes,
                   gpu_allocated_bytes=b.gpu_allocated_bytes, gpu_reserved_bytes=b.gpu_reserved_bytes,
                   gpu_total_bytes=b.gpu_total_bytes, peak_phase=b.peak_phase,
                   cpu_total_bytes_per_node=b.cpu_total_bytes_per_node,
                   nvme_total_bytes_per_node=b.nvme_total_bytes_per_node,
                   fits=b.fits, terms=b.terms_dict(), term_phases={t.name: t.phase for t in b.gpu_terms},
                   cpu_terms={t.name: t.bytes for t in b.cpu_terms}, nvme_terms={t.name: t.bytes for t in b.nvme_terms},
                   notes=tuple(b.notes))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "notes": list(self.notes)}


@dataclass(frozen=True)
class PlanDocument:
    """plan.json. ``dp`` is the data-parallel degree the plan was laid out with; ``ds_config`` the
    config as written (after --set) and ``ds_config_sha256`` its digest (see qwen_ds/pairing.py)."""

    model: ModelRef | None = None
    cluster: ClusterRef | None = None
    workload: Workload = field(default_factory=Workload)
    plan: Plan = field(default_factory=Plan)
    dp: int | None = None
    fp8_recipe: dict[str, Any] | None = None
    overrides: tuple[str, ...] = ()
    chosen_by: str | None = None
    memory: PlannedMemory | None = None
    launch_command: tuple[str, ...] = ()
    #: who runs the config (qwen_ds.consumers.CONSUMERS) and, for the HF Trainer / accelerate, the
    #: TrainingArguments the estimate holds for (what training_args.json holds)
    consumer: str = "deepspeed"
    train_args: dict[str, Any] | None = None
    ds_config_sha256: str | None = None
    ds_config: dict[str, Any] | None = None
    qwen_ds_version: str | None = None
    created: str | None = None
    deepspeed_version: str | None = None
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ writing

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object; sections that are None are left out."""
        out: dict[str, Any] = {"schema_version": self.schema_version, "qwen_ds_version": self.qwen_ds_version,
                               "created": self.created, "deepspeed_version": self.deepspeed_version}
        if self.model is not None:
            out["model"] = dataclasses.asdict(self.model)
        if self.cluster is not None:
            out["cluster"] = dataclasses.asdict(self.cluster)
        out["workload"] = dataclasses.asdict(self.workload)
        out["plan"] = {**dataclasses.asdict(self.plan), **({"dp": self.dp} if self.dp is not None else {})}
        out.update(fp8_recipe=self.fp8_recipe, overrides=list(self.overrides), chosen_by=self.chosen_by)
        if self.memory is not None:
            out["memory"] = self.memory.to_json()
        out["launch"] = {"command": list(self.launch_command)}
        out["consumer"] = self.consumer
        if self.train_args is not None:
            out["train_args"] = self.train_args
        if self.ds_config_sha256 is not None:
            out[DIGEST_KEY] = self.ds_config_sha256
        if self.ds_config is not None:
            out[CONFIG_KEY] = self.ds_config
        return out

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode("utf-8")

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_json(cls, doc: Any, where: str = "plan.json") -> "PlanDocument":
        """The document from the file's JSON object; InputError naming ``where`` and the field."""
        check_fields(doc, where)
        version = doc.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise InputError(f"{where}: schema_version {version} is from a newer qwen-ds "
                             f"(this one, {__version__}, reads up to "
                             f"{SCHEMA_VERSION}); upgrade qwen-ds, or regenerate the plan with this one")
        try:
            workload = _build(Workload, doc.get("workload"))
            plan = _build(Plan, doc.get("plan"))
        except InputError as exc:  # Plan / Workload name CLI flags; here the file is what says it
            raise InputError(f"{where}: {exc}; {FIX}") from None
        section = doc.get("plan") or {}
        launch = doc.get("launch") or {}
        return cls(
            model=_build(ModelRef, doc["model"]) if "model" in doc else None,
            cluster=_build(ClusterRef, doc["cluster"]) if "cluster" in doc else None,
            workload=workload, plan=plan, dp=section.get("dp"),
            fp8_recipe=doc.get("fp8_recipe"), overrides=tuple(doc.get("overrides", ())), chosen_by=doc.get("chosen_by"),
            memory=_memory(doc["memory"]) if "memory" in doc else None,
            launch_command=tuple(launch.get("command", ())),
            consumer=doc.get("consumer", "deepspeed"), train_args=doc.get("train_args"),
            ds_config_sha256=doc.get(DIGEST_KEY), ds_config=doc.get(CONFIG_KEY),
            qwen_ds_version=doc.get("qwen_ds_version"), created=doc.get("created"),
            deepspeed_version=doc.get("deepspeed_version"), schema_version=version,
        )

    # ------------------------------------------------------------------ uses

    def check_config(self, cfg: dict[str, Any]) -> PairCheck:
        """Whether ``cfg`` is the config this plan was made with."""
        return check_pair(cfg, self.ds_config_sha256, self.ds_config)

    @property
    def wants_fp8(self) -> bool:
        return bool(self.fp8_recipe) or self.plan.precision == "fp8"


def _build(cls: type, section: dict[str, Any] | None) -> Any:
    """``cls`` from the section's keys that are its fields (others ignored); absent fields take ``cls``'s defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in (section or {}).items() if k in names})


def _memory(section: dict[str, Any]) -> PlannedMemory:
    mem = _build(PlannedMemory, section)
    return dataclasses.replace(mem, notes=tuple(mem.notes))


# --------------------------------------------------------------------------- field types


def _int(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _one_of(values: tuple) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and v in values


def _is(*types: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, types) and not (isinstance(v, bool) and bool not in types)


def _dict_of(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and all(check(x) for x in v.values())


def _list_of_str(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_POS = (_int(1), "a positive integer")
_STR = (_is(str), "a string")
_OPT_STR = (_opt(_is(str)), "a string or null")
_OBJ = (_is(dict), "an object")
_NUM = (_number, "a number")

#: dotted path -> (check, what it must be). Every field that a reader uses, with its type; a field
#: that is absent takes its default, one that is present must pass.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "schema_version": (_int(0), "a non-negative integer"),
    "qwen_ds_version": _OPT_STR, "created": _OPT_STR, "deepspeed_version": _OPT_STR, "chosen_by": _OPT_STR,
    "model": _OBJ,
    "model.name": _STR,
    "model.family": _OPT_STR,
    "model.source": _OPT_STR,
    "model.config": (_opt(_is(dict)), "an object (the model's config.json)"),
    "cluster": _OBJ,
    "cluster.gpu": _OPT_STR,
    "cluster.nodes": _POS,
    "cluster.gpus_per_node": _POS,
    "cluster.world_size": _POS,
    "cluster.hostfile": _OPT_STR,
    "workload": _OBJ,
    "workload.mode": (_one_of(MODES), f"one of {', '.join(MODES)}"),
    "workload.seq_len": _POS,
    "workload.new_tokens": (_int(0), "an integer >= 0"),
    "workload.optimizer": _STR,
    "plan": _OBJ,
    "plan.zero_stage": (lambda v: _int(0)(v) and v <= 3, "0, 1, 2 or 3"),
    "plan.offload_optimizer": (_one_of(OFFLOAD), f"one of {', '.join(OFFLOAD)}"),
    "plan.offload_param": (_one_of(OFFLOAD), f"one of {', '.join(OFFLOAD)}"),
    "plan.tp": _POS,
    "plan.pp": _POS,
    "plan.dp": _POS,
    "plan.micro_batch": _POS,
    "plan.grad_accum": _POS,
    "plan.checkpointing": (_is(bool), "true or false"),
    "plan.precision": (_one_of(INFER_PRECISIONS), f"one of {', '.join(INFER_PRECISIONS)}"),
    "plan.loss": (_one_of(LOSS_PATHS), f"one of {', '.join(LOSS_PATHS)}"),
    "plan.kernels": (_one_of(KERNELS), f"one of {', '.join(KERNELS)}"),
    "plan.allocator": (_one_of(ALLOCATORS), f"one of {', '.join(ALLOCATORS)}"),
    "plan.overlap_comm": (_is(bool), "true or false"),
    **{f"plan.{k}": (_opt(_int(0)), "an integer >= 0 or null") for k in (
        "reduce_bucket_size", "allgather_bucket_size", "prefetch_bucket_size", "param_persistence_threshold")},
    **{f"plan.{k}": (_int(0), "an integer >= 0")
       for k in ("max_live_parameters", "max_reuse_distance", "sub_group_size")},
    "plan.hpz_partition_size": _POS,
    "plan.finetune": (_one_of(FINETUNE_METHODS), f"one of {', '.join(FINETUNE_METHODS)}"),
    "plan.lora_rank": _POS,
    "plan.lora_alpha": (_opt(_int(1)), "a positive integer or null"),
    "plan.lora_targets": _STR,
    "plan.freeze_layers": (lambda v: _is(int)(v) and v != 0, "a non-zero integer"),
    "plan.trainable_modules": _STR,
    "plan.quantized_weights": (_is(bool), "true or false"),
    "plan.quantized_gradients": (_is(bool), "true or false"),
    "fp8_recipe": (_opt(_is(dict)), "an object or null"),
    "overrides": (_list_of_str, "a list of strings"),
    "memory": _OBJ,
    **{f"memory.{k}": (_opt(_number), "a number or null") for k in (
        "total_params", "active_params", "gpu_memory_bytes", "gpu_allocated_bytes", "gpu_reserved_bytes",
        "gpu_total_bytes",
        "cpu_total_bytes_per_node", "nvme_total_bytes_per_node")},
    "memory.peak_phase": _OPT_STR,
    "memory.fits": (_opt(_is(bool)), "true, false or null"),
    "memory.terms": (_dict_of(_number), "an object of numbers"),
    "memory.term_phases": (_dict_of(_is(str)), "an object of strings"),
    "memory.cpu_terms": (_dict_of(_number), "an object of numbers"),
    "memory.nvme_terms": (_dict_of(_number), "an object of numbers"),
    "memory.notes": (_list_of_str, "a list of strings"),
    "launch": _OBJ,
    "consumer": (_one_of(CONSUMERS), f"one of {', '.join(CONSUMERS)}"),
    "train_args": (_opt(_is(dict)), "an object (TrainingArguments fields) or null"),
    "launch.command": (_list_of_str, "a list of strings"),
    DIGEST_KEY: (lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
                 "64 lowercase hex digits"),
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
            raise InputError(f"{where}: {path} is {_show(node[key])} ({_json_type(node[key])}); "
                             f"it must be {expected}; {FIX}")


def _show(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return one_line(text if len(text) <= 60 else text[:57] + "...")


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object"}
    return names.get(type(v), type(v).__name__)


def parse_plan_text(text: str, where: str) -> PlanDocument:
    try:
        doc = json.loads(text)
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a plan.json; {FIX}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer literal past Python's digit limit
        raise InputError(f"{where}: not JSON ({one_line(exc)[:100]}); {FIX}") from None
    return PlanDocument.from_json(doc, where)


def read_plan_document(path: str, flag: str = "--plan") -> PlanDocument:
    """plan.json as a PlanDocument; every problem is an InputError naming ``flag`` and the path."""
    from .fileio import read_text

    text = read_text(path, flag, FIX)
    return parse_plan_text(text, f"{flag} {one_line(path)}")
