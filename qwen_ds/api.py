"""The use cases behind the CLI, and qwen-ds's Python API: ``estimate``, ``plan``, ``generate`` and
``validate``, each returning a typed result. The commands in qwen_ds/commands only parse flags, call
one of these and print the result; nothing here imports click, torch or DeepSpeed.

Plan knobs are keywords named as in qwen_ds/knobs.py (``zero_stage``, ``micro_batch``, ``checkpointing``,
...); ``plan`` and ``generate`` search over the knobs not given (``pinned`` overrides which count as given).
Failures raise ``InputError`` (exit 2) or ``DoesNotFit`` (exit 3) with a one-line message.

    >>> from qwen_ds import estimate
    >>> estimate("Qwen3-8B", "H100-SXM", nodes=2, micro_batch=2).fits
    True
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from . import __version__
from .errors import DoesNotFit, InputError
from .estimator import Layout, MemoryBreakdown, estimate as _estimate, layout as _layout
from .format import gib
from .hardware import GPU, Cluster, get_gpu
from .knobs import BY_NAME, SEARCHED, Plan, Workload
from .models import ModelSpec, load_model
from .plandoc import ClusterRef, ModelRef, PlanDocument, deepspeed_version
from .units import GIB

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    model: ModelSpec
    cluster: Cluster
    workload: Workload
    plan: Plan


def cluster_shape(hostfile: str | None, nodes: int | None, gpus_per_node: int | None) -> tuple[int, int]:
    """(nodes, gpus_per_node) from a hostfile and/or the explicit numbers; they must agree."""
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node)):
        if v is not None and v < 1:
            raise InputError(f"{flag} {v}: must be a positive integer")
    if hostfile:
        from .hostfile import read_hostfile

        hf = read_hostfile(hostfile)
        for flag, given, actual in (("--nodes", nodes, hf.nodes), ("--gpus-per-node", gpus_per_node, hf.gpus_per_node)):
            if given is not None and given != actual:
                raise InputError(f"{flag} {given} disagrees with --hostfile {hostfile} ({actual}); "
                                 "drop the flag or fix the hostfile")
        return hf.nodes, hf.gpus_per_node
    return (1 if nodes is None else nodes), (8 if gpus_per_node is None else gpus_per_node)


def check_precision(gpu: GPU, precision: str, mode: str) -> None:
    """bf16 needs compute capability >= 8.0, fp8 >= 8.9; refuse with the alternatives."""
    if precision == "bf16" and not gpu.bf16:
        raise InputError(f"--precision bf16: {gpu.name} (compute capability {gpu.compute_capability}) has no bf16; "
                         "use --precision fp16 (with loss scaling) or fp32")
    if precision == "fp8" and not gpu.fp8:
        alt = "bf16" if gpu.bf16 else "fp16"
        raise InputError(f"--precision fp8: {gpu.name} (compute capability {gpu.compute_capability}) "
                         "has no FP8 tensor cores "
                         f"(needs >= 8.9: L40S, H100, H200, B200); use --precision {alt}")
    if precision == "int8" and mode == "train":
        raise InputError("--precision int8 is for --mode infer (weights); for training use bf16, fp16, fp32 or fp8")


def inputs(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
           hostfile: str | None = None, **knobs: Any) -> Inputs:
    """Model, cluster, workload and plan from names and knobs; a knob not given takes its default
    (qwen_ds/knobs.py). Every problem is an InputError naming the flag."""
    unknown = sorted(set(knobs) - set(BY_NAME))
    if unknown:
        raise TypeError(f"unknown plan knob(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    kv = {name: knobs[name] if knobs.get(name) is not None else k.default for name, k in BY_NAME.items()}
    for name in ("seq_len", "micro_batch", "grad_accum", "tp", "pp"):
        if kv[name] < 1:
            raise InputError(f"{BY_NAME[name].flag} {kv[name]}: must be a positive integer")
    n, gpn = cluster_shape(hostfile, nodes, gpus_per_node)
    spec = model if isinstance(model, ModelSpec) else load_model(model)
    gpu_spec = gpu if isinstance(gpu, GPU) else get_gpu(gpu)
    cluster = Cluster(gpu_spec, n, gpn)
    mode = kv["mode"]
    precision = kv["precision"] or ("bf16" if gpu_spec.bf16 else "fp16")
    check_precision(gpu_spec, precision, mode)
    zero = kv["zero_stage"] if kv["zero_stage"] is not None else (3 if mode == "train" else 0)
    workload = Workload(mode=mode, seq_len=kv["seq_len"], new_tokens=kv["new_tokens"])
    if mode == "infer" and zero == 3 and kv["tp"] > 1:
        raise InputError(f"--tp {kv['tp']} with --mode infer --zero 3: ZeRO-Inference has no tensor parallelism; "
                         "use --zero 0 --tp N (DeepSpeed-Inference) or --tp 1")
    plan_ = Plan(zero_stage=zero, precision=precision,
                 **{k: kv[k] for k in ("offload_optimizer", "offload_param", "tp", "pp", "micro_batch", "grad_accum",
                                       "checkpointing", "loss", "kernels")})
    return Inputs(spec, cluster, workload, plan_)


# --------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Estimate:
    """Memory per GPU and per node of one plan, term by term."""

    model: ModelSpec
    cluster: Cluster
    workload: Workload
    plan: Plan
    layout: Layout
    memory: MemoryBreakdown

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def to_json(self) -> dict[str, Any]:
        from .reports import estimate_json

        return estimate_json(self.model, self.cluster, self.workload, self.plan, self.layout, self.memory)

    def text(self) -> str:
        from .reports import estimate_text

        return estimate_text(self.model, self.cluster, self.workload, self.plan, self.layout, self.memory)


def estimate_inputs(i: Inputs, plan_: Plan | None = None) -> Estimate:
    p = plan_ or i.plan
    lay = _layout(i.model, i.cluster, p)
    return Estimate(i.model, i.cluster, i.workload, p, lay, _estimate(i.model, i.cluster, i.workload, p, lay))


def estimate(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
             hostfile: str | None = None, **knobs: Any) -> Estimate:
    """Memory of one plan: ``estimate("Qwen3-8B", "H100-SXM", nodes=2, zero_stage=3, micro_batch=2)``."""
    return estimate_inputs(inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs))


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SearchOptions:
    """The planner's limits (the CLI's --global-batch, --headroom, ... flags)."""

    global_batch: int | None = None
    headroom: float = 0.92
    cpu_mem_per_node: float | None = None  # GiB
    allow_nvme: bool = False
    allow_tp: bool = False
    allow_pp: bool = False
    inter_node_gbps: float | None = None
    compute_efficiency: float = 0.55

    def constraints(self, pinned: dict[str, Any]):
        from .planner import Constraints
        from .planner.search import cpu_mem_bytes

        nvme = self.allow_nvme or "nvme" in (pinned.get("offload_optimizer"), pinned.get("offload_param"))
        return Constraints(headroom=self.headroom, cpu_mem_per_node=cpu_mem_bytes(self.cpu_mem_per_node),
                           allow_nvme=nvme,
                           global_batch=self.global_batch, train_tp=self.allow_tp, train_pp=self.allow_pp, fixed=pinned)

    def network(self):
        from .planner import Network

        return Network(inter_node_gbps=self.inter_node_gbps, compute_efficiency=self.compute_efficiency)


@dataclass(frozen=True)
class PlanSearch:
    """The plans that fit, best first (each with its memory, layout and step time), the families
    rejected and why, and for training without a no-offload fit the smallest cluster that has one."""

    inputs: Inputs
    result: Any  # planner.SearchResult
    options: SearchOptions
    smallest: tuple[int, Any] | None = None  # (nodes, planner.Candidate)

    @property
    def accepted(self) -> tuple:
        return self.result.accepted

    @property
    def best(self):
        return self.result.accepted[0] if self.result.accepted else None

    def best_estimate(self) -> Estimate | None:
        """The winner's memory, as estimate reports it (from the search: nothing recomputed)."""
        c = self.best
        i = self.inputs
        return None if c is None else Estimate(i.model, i.cluster, i.workload, c.plan, c.layout, c.memory)

    def to_json(self, top: int = 8) -> dict[str, Any]:
        from .reports import describe

        i, res, smallest = self.inputs, self.result, self.smallest
        return {
            "model": i.model.name, "gpu": i.cluster.gpu.name, "nodes": i.cluster.nodes,
            "gpus_per_node": i.cluster.gpus_per_node,
            "mode": i.workload.mode, "considered": res.considered, "accepted": len(res.accepted),
            "best": [describe(c) for c in res.accepted[:top]],
            "rejected_families": [{"family": f, "reason": r} for f, r in res.rejected_families()],
            "smallest_cluster_without_offload": None if smallest is None else
            {"nodes": smallest[0], "gpus_per_node": i.cluster.gpus_per_node, "plan": describe(smallest[1])},
        }

    def text(self, top: int = 8, explain: bool = False) -> str:
        from .reports import plan_text

        i = self.inputs
        out = plan_text(i.model, i.cluster, i.workload, self.result, top, self.smallest,
                        i.workload.mode == "infer" or self.options.allow_tp)
        best = self.best_estimate()
        if explain and best is not None:
            out += "\n\nwinner, memory:\n" + best.text()
            out += "\n\nwinner, step time: " + ", ".join(f"{k} {v:.3f}" for k, v in self.best.time.parts().items())
        return out


def _pinned(knobs: dict[str, Any], pinned: Collection[str] | None) -> dict[str, Any]:
    """The searched knobs the caller fixed: those named in ``pinned``, else those given (not None)."""
    names = set(pinned) if pinned is not None else {k for k, v in knobs.items() if v is not None}
    return {k: knobs[k] for k in SEARCHED if k in names and knobs.get(k) is not None}


def search_inputs(i: Inputs, pinned: dict[str, Any], options: SearchOptions, smallest: bool = True) -> PlanSearch:
    from .planner import search, smallest_cluster_without_offload

    cons, net = options.constraints(pinned), options.network()
    res = search(i.model, i.cluster, i.workload, i.plan, cons, net)
    small = None
    no_offload_fits = any(c.plan.offload_optimizer == c.plan.offload_param == "none" for c in res.accepted)
    if smallest and i.workload.mode == "train" and not no_offload_fits:
        small = smallest_cluster_without_offload(i.model, i.cluster, i.workload, i.plan, cons, net)
    return PlanSearch(i, res, options, small)


def plan(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
         hostfile: str | None = None, pinned: Collection[str] | None = None, options: SearchOptions | None = None,
         **knobs: Any) -> PlanSearch:
    """The fastest plans that fit: ``plan("Qwen3-32B", "H100-SXM", nodes=2).best.plan``. Knobs given
    are pinned; the planner chooses the rest."""
    i = inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs)
    return search_inputs(i, _pinned(knobs, pinned), options or SearchOptions())


# --------------------------------------------------------------------------- generate


@dataclass(frozen=True)
class Generated:
    """A validated DeepSpeed config and its plan.json; ``paths`` is where they were written (empty
    when no output directory was given)."""

    config: dict[str, Any]
    document: PlanDocument
    estimate: Estimate
    problems: tuple = ()  # warnings of the rendered config
    edited: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # knob: (planned, as written after --set)
    paths: tuple[Path, ...] = ()

    def text(self) -> str:
        p, lay, mem = self.estimate.plan, self.estimate.layout, self.estimate.memory
        lines = [f"wrote {self.paths[0]} and {self.paths[1]}"] if self.paths else []
        lines.append(f"plan chosen by {self.document.chosen_by}")
        if self.edited:
            lines.append(f"--set changed {edits_text(self.edited)}; the memory below is for the config as written")
        lines.append(f"ZeRO-{p.zero_stage}, offload optimizer={p.offload_optimizer} params={p.offload_param}, "
                     f"dp {lay.dp} x tp {lay.tp} x pp {lay.pp}, "
                     f"micro-batch {p.micro_batch} x grad-accum {p.grad_accum}, "
                     f"checkpointing {'on' if p.checkpointing else 'off'}, {p.precision}; "
                     f"{mem.gpu_total_bytes / GIB:.2f} GiB of {mem.gpu_memory_bytes / GIB:.2f} GiB per GPU")
        lines.append("launch: " + " ".join(self.document.launch_command))
        return "\n".join(lines)


def edits_text(edited: dict[str, tuple[Any, Any]]) -> str:
    import json

    def show(v: Any) -> str:
        return json.dumps(v) if isinstance(v, bool) else str(v)

    return ", ".join(f"{k} {show(v0)} -> {show(v1)}" for k, (v0, v1) in edited.items())


def launch_command(hostfile: str | None, out: Path, mode: str) -> list[str]:
    return ["qwen-ds", "launch", "--hostfile", hostfile or "HOSTFILE", "--config", str(out / "ds_config.json"),
            "--plan", str(out / "plan.json"), mode]


def _choose(i: Inputs, pinned: dict[str, Any], options: SearchOptions) -> tuple[Inputs, Estimate | None, str]:
    """The plan to render: the knobs as given when every searched one is pinned, else the
    planner's fastest plan that fits (with its estimate, to reuse when --set changes nothing)."""
    options.constraints(pinned), options.network()  # the planner flags are checked even when nothing is searched
    if len(pinned) == len(SEARCHED):
        return i, None, "flags"
    found = search_inputs(i, pinned, options, smallest=False)
    if not found.result.considered:
        raise InputError("no plan matches the pinned knobs "
                         f"({', '.join(f'{k}={v}' for k, v in sorted(pinned.items()))}); "
                         "pin fewer or see qwen-ds plan")
    if not found.accepted:
        reasons = "; ".join(f"{f}: {r}" for f, r in found.result.rejected_families()[:4])
        raise DoesNotFit(f"no plan fits ({reasons}); see qwen-ds plan")
    chosen_by = f"planner (best of {found.result.considered}; pinned: {', '.join(sorted(pinned)) or 'none'})"
    return dataclasses.replace(i, plan=found.best.plan), found.best_estimate(), chosen_by


def generate(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
             hostfile: str | None = None, output_dir: str | Path | None = None, force: bool = False,
             overrides: Collection[str] = (), template_dir: str | Path | None = None, config_options: Any = None,
             zero_plus_plus: dict[str, Any] | None = None, pinned: Collection[str] | None = None,
             options: SearchOptions | None = None, **knobs: Any) -> Generated:
    """Render, --set, validate and estimate a DeepSpeed config for a plan (the planner fills the
    knobs not pinned), and with ``output_dir`` publish ds_config.json + plan.json as one unit.
    ``config_options`` is a render.ConfigOptions (lr, warmup, ...); ``zero_plus_plus`` sets
    hpz_partition_size / quantized_weights / quantized_gradients."""
    from .pairing import config_digest
    from .publish import check_targets, publish_files
    from .render import ConfigOptions, apply_override, fp8_recipe, render
    from .validate import Context, validate_config
    from .validate.plan_from_config import plan_with_edits

    options = options or SearchOptions()
    i = inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs)
    i = dataclasses.replace(i, plan=dataclasses.replace(i.plan, **(zero_plus_plus or {})))
    i, searched, chosen_by = _choose(i, _pinned(knobs, pinned), options)
    out = Path(output_dir) if output_dir is not None else None
    names = ["plan.json", "ds_config.json"]
    if out is not None:
        check_targets(out, names, force)  # early, to fail before the work; publish_files checks again under its lock
    rendered = render(i.model, i.cluster, i.workload, i.plan, config_options or ConfigOptions(),
                      Path(template_dir) if template_dir else None)
    cfg = copy.deepcopy(rendered)
    for item in overrides:
        apply_override(cfg, item)
    ctx = Context(world_size=i.cluster.world_size, gpus_per_node=i.cluster.gpus_per_node, pp=i.plan.pp,
                  gpu=i.cluster.gpu, model=i.model)
    problems = validate_config(cfg, ctx)
    bad = [p for p in problems if p.severity == "error"]
    if bad:
        raise InputError(f"the rendered config has {len(bad)} problem(s); nothing written",
                         detail=problems_text(problems, "ds_config.json"))
    # the verdict is for the config as written: knobs --set changed are read back from it
    plan_, edited = plan_with_edits(i.plan, rendered, cfg)
    est = searched if searched is not None and not edited else estimate_inputs(i, plan_)
    usable = int(i.cluster.gpu.memory_bytes * options.headroom)  # the planner's limit, for every plan gen-config writes
    if est.memory.gpu_total_bytes > usable:
        by = f" with {edits_text(edited)} (--set)" if edited else ""
        raise DoesNotFit(f"this plan{by} needs {gib(est.memory.gpu_total_bytes)} GiB per GPU, "
                         f"over the {gib(usable)} GiB usable "
                         f"(--headroom {options.headroom:g} of {gib(i.cluster.gpu.memory_bytes)} GiB); nothing written "
                         "(change the plan, or see qwen-ds estimate)", detail=est.text())
    from .reports import planned_memory

    m, c = i.model, i.cluster
    doc = PlanDocument(
        model=ModelRef(m.name, m.family, m.source, dict(m.config)),
        cluster=ClusterRef(c.gpu.name, c.nodes, c.gpus_per_node, c.world_size, hostfile),
        workload=i.workload, plan=plan_, dp=est.layout.dp, fp8_recipe=fp8_recipe(plan_), overrides=tuple(overrides),
        chosen_by=chosen_by, memory=planned_memory(m, est.memory),
        launch_command=tuple(launch_command(hostfile, out if out is not None else Path("."), i.workload.mode)),
        ds_config_sha256=config_digest(cfg), ds_config=cfg, qwen_ds_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        deepspeed_version=deepspeed_version(),
    )
    paths: tuple[Path, ...] = ()
    if out is not None:
        # plan.json first: a reader between the two renames (or after a crash there) sees the new plan beside
        # the old config, which the plan's digest refuses; the other order could pair the new config with an
        # old plan.json that has no digest, which readers only warn about
        publish_files(out, [("plan.json", doc.to_bytes()), ("ds_config.json", _json_bytes(cfg))], force)
        paths = (out / "ds_config.json", out / "plan.json")
    return Generated(cfg, doc, est, tuple(problems), edited, paths)


def _json_bytes(doc: dict) -> bytes:
    import json

    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def problems_text(problems, source: str) -> str:
    """Validation problems, one line each, as gen-config and validate print them."""
    return "\n".join(f"{source}: {p.severity}: {p.path}: {p.message} [{p.rule}]" for p in problems)


# --------------------------------------------------------------------------- validate


@dataclass(frozen=True)
class Validation:
    """Every problem of a DeepSpeed config, and with a model and GPU the memory verdict."""

    config: str
    problems: tuple
    memory: Estimate | None
    deepspeed_checked: bool

    @property
    def errors(self) -> tuple:
        return tuple(p for p in self.problems if p.severity == "error")

    @property
    def ok(self) -> bool:
        return not self.errors and (self.memory is None or self.memory.fits)

    @property
    def exit_code(self) -> int:
        from .errors import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT

        return EXIT_BAD_INPUT if self.errors else EXIT_DOES_NOT_FIT if not self.ok else 0

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "ok": self.ok, "problems": [p.as_dict() for p in self.problems],
                "deepspeed_checked": self.deepspeed_checked, "memory": self.memory.to_json() if self.memory else None}

    def verdict_text(self) -> str:
        """The memory verdict and 'ok' lines (the problems: ``problems_text``)."""
        lines = []
        mem = self.memory.memory if self.memory else None
        if mem:
            lines.append(f"{self.config}: memory: {mem.gpu_total_bytes / GIB:.2f} GiB of "
                         f"{mem.gpu_memory_bytes / GIB:.2f} GiB per GPU: {'fits' if mem.fits else 'DOES NOT FIT'}")
        if self.ok:
            what = "schema, rules and DeepSpeed 0.19.8 parser" if self.deepspeed_checked else "schema and rules"
            lines.append(f"{self.config}: ok ({what})")
        return "\n".join(lines)


def validate(config: str, *, model: str | ModelSpec | None = None, gpu: str | GPU | None = None,
             hostfile: str | None = None, nodes: int | None = None, gpus_per_node: int | None = None, pp: int = 1,
             seq_len: int = 4096, new_tokens: int = 0, checkpointing: bool = True, use_deepspeed: bool | None = None,
             plan_path: str | None = None) -> Validation:
    """Check the DeepSpeed config file ``config``: JSON Schema of DeepSpeed 0.19.8, semantic rules,
    DeepSpeed's own parser (``use_deepspeed``; default: when it is installed), against a plan.json
    (``plan_path``), and with ``model`` and ``gpu`` the memory verdict."""
    from .plandoc import read_plan_document
    from .validate import Context, Problem, validate_config
    from .validate.parse import read_config

    cfg = read_config(config)
    doc = read_plan_document(plan_path, "--plan") if plan_path else None
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node), ("--pp", pp), ("--seq-len", seq_len)):
        if v is not None and v < 1:
            raise InputError(f"{flag} {v}: must be a positive integer")
    world = gpn = None
    if hostfile or nodes is not None or gpus_per_node is not None:
        n, gpn = cluster_shape(hostfile, nodes, gpus_per_node)
        world = n * gpn
    spec = model if model is None or isinstance(model, ModelSpec) else load_model(model)
    gpu_spec = gpu if gpu is None or isinstance(gpu, GPU) else get_gpu(gpu)
    if use_deepspeed is None:
        from .validate.dscheck import deepspeed_available

        use_deepspeed = deepspeed_available()
    ctx = Context(world_size=world, gpus_per_node=gpn, pp=pp, gpu=gpu_spec, model=spec)
    problems = validate_config(cfg, ctx, use_deepspeed=use_deepspeed)
    if doc is not None:
        from .pairing import plan_problems

        problems += plan_problems(doc.check_config(cfg), config, plan_path)
    memory = None
    if not any(p.severity == "error" for p in problems) and spec and gpu_spec:
        try:
            verdict = config_estimate(cfg, spec, gpu_spec, world, gpn, pp, seq_len, new_tokens, checkpointing)
            verdict.to_json()  # the totals overflow a float for absurd sizes: here, where it is a warning
            memory = verdict
        except (InputError, OverflowError, ValueError) as exc:
            problems.append(Problem("$", f"memory verdict skipped: {exc}; give --hostfile or --nodes/--gpus-per-node "
                                    "matching the config", "memory", "warning"))
    ds_ran = bool(use_deepspeed) and not any(p.rule != "deepspeed" and p.severity == "error" for p in problems)
    return Validation(config, tuple(problems), memory, ds_ran)


def config_estimate(cfg: dict[str, Any], spec: ModelSpec, gpu: GPU, world: int | None, gpn: int | None, pp: int,
                    seq_len: int, new_tokens: int, checkpointing: bool) -> Estimate:
    """The memory of the plan a DeepSpeed config runs (its knobs read back by plan_from_config)."""
    from .validate import is_inference_config
    from .validate.plan_from_config import plan_from_config

    p = plan_from_config(cfg, pp=pp, checkpointing=checkpointing, default_precision="bf16" if gpu.bf16 else "fp16")
    infer = is_inference_config(cfg) or "optimizer" not in cfg and p.zero_stage == 3 and p.offload_param != "none"
    nodes, per_node = (world // gpn, gpn) if world else (1, max(p.tp * pp, 1))
    i = Inputs(spec, Cluster(gpu, nodes, per_node), Workload(mode="infer" if infer else "train", seq_len=seq_len,
                                                              new_tokens=new_tokens), p)
    return estimate_inputs(i)
