"""The gen-config use case: render, --set, validate and estimate a DeepSpeed config for a plan, for
the consumer that runs it, and publish it with its plan.json (see qwen_ds/api.py for the others)."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

from . import __version__
from .api import Estimate, Inputs, SearchOptions, _pinned, estimate_inputs, inputs, problems_text, search_inputs
from .errors import DoesNotFit, InputError
from .format import gib
from .hardware import GPU
from .knobs import SEARCHED
from .models import ModelSpec
from .plandoc import ClusterRef, ModelRef, PlanDocument, deepspeed_version
from .units import GIB


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
    #: why the built-in runtime cannot run the plan (its launch line names YOUR_SCRIPT.py then), or None
    own_script: str | None = None

    def text(self) -> str:
        p, lay, mem = self.estimate.plan, self.estimate.layout, self.estimate.memory
        lines = [f"wrote {', '.join(map(str, self.paths[:-1]))} and {self.paths[-1]}"] if self.paths else []
        lines.append(f"plan chosen by {self.document.chosen_by}")
        if self.edited:
            lines.append(f"--set changed {edits_text(self.edited)}; the memory below is for the config as written")
        lines.append(f"ZeRO-{p.zero_stage}, offload optimizer={p.offload_optimizer} params={p.offload_param}, "
                     f"dp {lay.dp} x tp {lay.tp} x pp {lay.pp}, "
                     f"micro-batch {p.micro_batch} x grad-accum {p.grad_accum}, "
                     f"checkpointing {'on' if p.checkpointing else 'off'}, {p.precision}; "
                     f"{mem.gpu_total_bytes / GIB:.2f} GiB of {mem.gpu_memory_bytes / GIB:.2f} GiB per GPU, "
                     f"{mem.cpu_total_bytes_per_node / GIB:.2f} GiB CPU RAM per node")
        args = self.document.train_args
        if args is not None:
            lines.append(f"{self.document.consumer}: the estimate holds for per_device_train_batch_size "
                         f"{args['per_device_train_batch_size']}, "
                         f"gradient_accumulation_steps {args['gradient_accumulation_steps']}, "
                         f"gradient_checkpointing {args['gradient_checkpointing']}, "
                         f"{'bf16' if args['bf16'] else 'fp16' if args['fp16'] else 'fp32'} (training_args.json)")
        mark = f" (needs your own script: {self.own_script})" if self.own_script else ""
        lines.append(f"launch{mark}: " + " ".join(self.document.launch_command))
        return "\n".join(lines)


def edits_text(edited: dict[str, tuple[Any, Any]]) -> str:
    import json

    def show(v: Any) -> str:
        return json.dumps(v) if isinstance(v, bool) else str(v)

    return ", ".join(f"{k} {show(v0)} -> {show(v1)}" for k, (v0, v1) in edited.items())


def launch_command(hostfile: str | None, out: Path, mode: str, consumer: str = "deepspeed",
                   own_script: bool = False) -> list[str]:
    """How to run it: the built-in runtime (``train`` / ``infer``), or the user's script (HF Trainer / accelerate,
    or a plan the built-in runtime does not run: ``own_script``)."""
    entry = [mode] if consumer == "deepspeed" and not own_script else ["YOUR_SCRIPT.py"] + (
        ["--deepspeed", str(out / "ds_config.json")] if consumer == "hf-trainer" else [])
    return ["qwen-ds", "launch", "--hostfile", hostfile or "HOSTFILE", "--config", str(out / "ds_config.json"),
            "--plan", str(out / "plan.json"), *entry]


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
    if found.result.grad_accum_fixed_at_one:
        from .reports import batch_line

        chosen_by += "; " + batch_line(found.result)
    return dataclasses.replace(i, plan=found.best.plan), found.best_estimate(), chosen_by


def generate(model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None, gpus_per_node: int | None = None,
             hostfile: str | None = None, output_dir: str | Path | None = None, force: bool = False,
             overrides: Collection[str] = (), template_dir: str | Path | None = None, config_options: Any = None,
             zero_plus_plus: dict[str, Any] | None = None, pinned: Collection[str] | None = None,
             options: SearchOptions | None = None, consumer: str = "deepspeed", **knobs: Any) -> Generated:
    """Render, --set, validate and estimate a DeepSpeed config for a plan (the planner fills the
    knobs not pinned), and with ``output_dir`` publish ds_config.json + plan.json as one unit (plus
    training_args.json, and llamafactory.yaml for the HF Trainer). ``config_options`` is a
    render.ConfigOptions (lr, warmup, ...); ``zero_plus_plus`` sets hpz_partition_size /
    quantized_weights / quantized_gradients; ``consumer`` is who runs the config
    (qwen_ds.consumers.CONSUMERS)."""
    from .builtin import builtin_gap
    from .consumers import TrainArgs, check_consumer, for_consumer, hf_fill, launch_allocator
    from .pairing import config_digest
    from .publish import check_targets, publish_files
    from .render import ConfigOptions, apply_override, fp8_recipe, render
    from .validate import Context, validate_config
    from .validate.plan_from_config import plan_with_edits

    options = options or SearchOptions()
    opts = config_options or ConfigOptions()
    i = inputs(model, gpu, nodes=nodes, gpus_per_node=gpus_per_node, hostfile=hostfile, **knobs)
    allocator = knobs.get("allocator") or launch_allocator(consumer)
    i = dataclasses.replace(i, plan=dataclasses.replace(i.plan, **(zero_plus_plus or {}), allocator=allocator))
    check_consumer(consumer, i.plan, i.workload.mode)
    i, searched, chosen_by = _choose(i, _pinned(knobs, pinned), options)
    check_consumer(consumer, i.plan, i.workload.mode)
    out = Path(output_dir) if output_dir is not None else None
    names = ["plan.json", "ds_config.json"] + [n for n, _ in _args_files(consumer, TrainArgs(), 0, None)]
    if out is not None:
        check_targets(out, names, force)  # early, to fail before the work; publish_files checks again under its lock
    rendered = render(i.model, i.cluster, i.workload, i.plan, opts, Path(template_dir) if template_dir else None)
    cfg = for_consumer(rendered, consumer)  # what is written: "auto" where the HF Trainer fills it
    for item in overrides:
        apply_override(cfg, item)
    ds_path = str(out / "ds_config.json") if out is not None else "ds_config.json"
    world, hidden = i.cluster.world_size, i.model.hidden_size
    # checked and estimated as it will run: the HF Trainer fills "auto" from the arguments written beside it
    runs = hf_fill(cfg, TrainArgs.of(i.plan, opts, ds_path), world, hidden) if consumer == "hf-trainer" else cfg
    ctx = Context(world_size=world, gpus_per_node=i.cluster.gpus_per_node, pp=i.plan.pp, gpu=i.cluster.gpu,
                  model=i.model)
    # the templates write only DeepSpeed keys: an unknown key came from --set, where a typo loses the edit
    problems = [dataclasses.replace(p, severity="error") if p.rule == "unknown_key" else p
                for p in validate_config(runs, ctx)]
    bad = [p for p in problems if p.severity == "error"]
    if bad:
        raise InputError(f"the rendered config has {len(bad)} problem(s); nothing written",
                         detail=problems_text(problems, "ds_config.json"))
    # the verdict is for the config as written: knobs --set changed are read back from it
    plan_, edited = plan_with_edits(i.plan, rendered, runs)
    est = searched if searched is not None and not edited else estimate_inputs(i, plan_)
    usable = int(i.cluster.gpu.memory_bytes * options.headroom)  # the planner's limit, for every plan gen-config writes
    if est.memory.gpu_total_bytes > usable:
        by = f" with {edits_text(edited)} (--set)" if edited else ""
        raise DoesNotFit(f"this plan{by} needs {gib(est.memory.gpu_total_bytes)} GiB per GPU, "
                         f"over the {gib(usable)} GiB usable "
                         f"(--headroom {options.headroom:g} of {gib(i.cluster.gpu.memory_bytes)} GiB); nothing written "
                         "(change the plan, or see qwen-ds estimate)", detail=est.text())
    from .reports import planned_memory

    args = TrainArgs.of(plan_, opts, ds_path) if consumer != "deepspeed" else None
    m, c = i.model, i.cluster
    gap = builtin_gap(m.family, plan_, i.workload.mode) if consumer == "deepspeed" else None
    doc = PlanDocument(
        model=ModelRef(m.name, m.family, m.source, dict(m.config)),
        cluster=ClusterRef(c.gpu.name, c.nodes, c.gpus_per_node, c.world_size, hostfile),
        workload=i.workload, plan=plan_, dp=est.layout.dp, fp8_recipe=fp8_recipe(plan_), overrides=tuple(overrides),
        chosen_by=chosen_by, memory=planned_memory(m, est.memory),
        launch_command=tuple(launch_command(hostfile, out if out is not None else Path("."), i.workload.mode,
                                            consumer, own_script=gap is not None)),
        consumer=consumer, train_args=args.to_json() if args else None,
        ds_config_sha256=config_digest(cfg), ds_config=cfg, qwen_ds_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        deepspeed_version=deepspeed_version(),
    )
    paths: tuple[Path, ...] = ()
    if out is not None:
        # plan.json first: a reader between the two renames (or after a crash there) sees the new plan beside
        # the old config, which the plan's digest refuses; the other order could pair the new config with an
        # old plan.json that has no digest, which readers only warn about
        files = [("plan.json", doc.to_bytes()), ("ds_config.json", _json_bytes(cfg))]
        files += _args_files(consumer, args, i.workload.seq_len, plan_) if args else []
        publish_files(out, files, force)
        paths = tuple(out / name for name, _ in [files[1], files[0], *files[2:]])
    return Generated(cfg, doc, est, tuple(problems), edited, paths, gap)


def _args_files(consumer: str, args: Any, seq_len: int, plan: Any) -> list[tuple[str, bytes]]:
    """The arguments written beside the config for the HF Trainer (also as LLaMA-Factory YAML) and
    accelerate."""
    if consumer == "deepspeed":
        return []
    files = [("training_args.json", _json_bytes(args.to_json()))]
    if consumer == "hf-trainer":
        files.append(("llamafactory.yaml", args.llamafactory_yaml(seq_len, plan).encode("utf-8")))
    return files


def _json_bytes(doc: dict) -> bytes:
    import json

    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")
