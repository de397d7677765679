"""The validate use case: every problem of a DeepSpeed config file, and with a model and a GPU the
memory verdict of the plan it runs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .api import Estimate, Inputs, cluster_shape, estimate_inputs, problems_text
from .errors import InputError
from .hardware import GPU, Cluster, get_gpu
from .knobs import FINETUNE_KNOBS, Workload
from .models import ModelSpec, load_model
from .units import GIB


@dataclass(frozen=True)
class Validation:
    """Every problem of a DeepSpeed config, and with a model and GPU the memory verdict."""

    config: str
    problems: tuple
    memory: Estimate | None
    deepspeed_checked: bool
    filled: Any = None  # consumers.Filled: the "auto" filled as the HF Trainer will, and from where
    model_known: bool = True  # without a model, the hidden-size "auto" keys are placeholders

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
        out = {"config": self.config, "ok": self.ok, "problems": [p.as_dict() for p in self.problems],
               "deepspeed_checked": self.deepspeed_checked, "memory": self.memory.to_json() if self.memory else None}
        if self.filled is not None:
            out["filled"] = self.filled_lines()
        return out

    def filled_lines(self) -> list[str]:
        lines = self.filled.lines()
        if not self.model_known:
            lines = [f"{x} (placeholder: pass --model)" if x.startswith("zero_optimization.") else x for x in lines]
        return lines

    def verdict_text(self) -> str:
        """The memory verdict and 'ok' lines (the problems: ``problems_text``)."""
        lines = [f'{self.config}: "auto" filled as the HF Trainer will: {x}' for x in self.filled_lines()] \
            if self.filled is not None else []
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
             seq_len: int | None = None, new_tokens: int = 0, checkpointing: bool | None = None,
             use_deepspeed: bool | None = None, plan_path: str | None = None, consumer: str | None = None,
             training_args: str | None = None, micro_batch: int | None = None, grad_accum: int | None = None,
             precision: str | None = None, allocator: str | None = None,
             finetune: dict[str, Any] | None = None) -> Validation:
    """Check the DeepSpeed config file ``config``: JSON Schema of DeepSpeed 0.19.8, semantic rules,
    DeepSpeed's own parser (``use_deepspeed``; default: when it is installed), against a plan.json
    (``plan_path``), and with ``model`` and ``gpu`` the memory verdict.

    A config with "auto" where the HF Trainer fills it (``consumer`` "hf-trainer" / "accelerate", or
    detected) is checked as the Trainer will run it: "auto" filled from ``micro_batch`` /
    ``grad_accum`` / ``precision``, else the ``training_args`` file (training_args.json or a
    LLaMA-Factory YAML), else qwen-ds's defaults; ``Validation.filled`` says which value came from
    where. ``seq_len`` / ``checkpointing`` None: the YAML's cutoff_len / checkpointing, else 4096 / on. What trains
    (the memory verdict's --finetune knobs, FINETUNE_KNOBS): ``finetune``, else a LLaMA-Factory YAML's
    finetuning_type / lora_* / quantization_bit / freeze_*, else full training."""
    from .consumers import CONSUMERS, fill_auto, hf_fillable, launch_allocator
    from .plandoc import read_plan_document
    from .validate import Context, Problem, validate_config
    from .validate.parse import read_config

    if consumer is not None and consumer not in CONSUMERS:
        raise InputError(f"--for {consumer!r}: choose one of {', '.join(CONSUMERS)}")
    cfg = read_config(config)
    doc = read_plan_document(plan_path, "--plan") if plan_path else None
    for flag, v in (("--nodes", nodes), ("--gpus-per-node", gpus_per_node), ("--pp", pp), ("--seq-len", seq_len),
                    ("--micro-batch", micro_batch), ("--grad-accum", grad_accum)):
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
    filled = None
    runs = cfg
    if consumer in ("hf-trainer", "accelerate") or (consumer is None and (hf_fillable(cfg) or training_args)):
        filled = fill_auto(cfg, world or 1, spec.hidden_size if spec else 1, training_args=training_args,
                           micro_batch=micro_batch, grad_accum=grad_accum, precision=precision,
                           default_precision="bf16" if gpu_spec is None or gpu_spec.bf16 else "fp16")
        runs = filled.config
    ctx = Context(world_size=world, gpus_per_node=gpn, pp=pp, gpu=gpu_spec, model=spec)
    problems = validate_config(runs, ctx, use_deepspeed=use_deepspeed)
    if doc is not None:
        from .pairing import plan_problems

        problems += plan_problems(doc.check_config(cfg), config, plan_path)
    ckpt = checkpointing if checkpointing is not None else (
        filled.checkpointing if filled is not None and filled.checkpointing is not None else True)
    seq = seq_len or (filled.seq_len if filled is not None and filled.seq_len else 4096)
    memory = None
    if not any(p.severity == "error" for p in problems) and spec and gpu_spec:
        try:
            # the allocator the run will have: as given, else its plan.json's, else torch's default for a config
            # the HF Trainer / accelerate launch ("auto" filled) and qwen-ds launch's expandable segments otherwise
            alloc = allocator or (doc.plan.allocator if doc is not None else
                                  launch_allocator("hf-trainer" if filled is not None else "deepspeed"))
            from_yaml = (filled.finetune if filled is not None else None) or {}
            trains = {**from_yaml, **(finetune or {})}  # flags win over the YAML
            verdict = config_estimate(runs, spec, gpu_spec, world, gpn, pp, seq, new_tokens, ckpt, alloc, trains)
            verdict.to_json()  # the totals overflow a float for absurd sizes: here, where it is a warning
            memory = verdict
        except (InputError, OverflowError, ValueError) as exc:
            problems.append(Problem("$", f"memory verdict skipped: {exc}; give --hostfile or --nodes/--gpus-per-node "
                                    "matching the config", "memory", "warning"))
    ds_ran = bool(use_deepspeed) and not any(p.rule != "deepspeed" and p.severity == "error" for p in problems)
    return Validation(config, tuple(problems), memory, ds_ran, filled, spec is not None)


def config_estimate(cfg: dict[str, Any], spec: ModelSpec, gpu: GPU, world: int | None, gpn: int | None, pp: int,
                    seq_len: int, new_tokens: int, checkpointing: bool, allocator: str = "expandable",
                    finetune: dict[str, Any] | None = None) -> Estimate:
    """The memory of the plan a DeepSpeed config runs (its knobs read back by plan_from_config), under the CUDA
    allocator ``allocator`` (knobs.ALLOCATORS), training what ``finetune`` says (FINETUNE_KNOBS; a DeepSpeed config
    does not say what trains)."""
    from .validate import is_inference_config
    from .validate.plan_from_config import plan_from_config

    p = plan_from_config(cfg, pp=pp, checkpointing=checkpointing, default_precision="bf16" if gpu.bf16 else "fp16")
    p = replace(p, allocator=allocator, **(finetune or {}))
    # ZeRO-Inference configs are ZeRO-3 with params offloaded and no optimizer; a config with batch keys
    # trains (the HF Trainer brings its own optimizer when the config has none: LLaMA-Factory's ZeRO-3 offload)
    batch_keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    infer = is_inference_config(cfg) or ("optimizer" not in cfg and p.zero_stage == 3 and p.offload_param != "none"
                                         and not any(k in cfg for k in batch_keys))
    nodes, per_node = (world // gpn, gpn) if world else (1, max(p.tp * pp, 1))
    i = Inputs(spec, Cluster(gpu, nodes, per_node), Workload(mode="infer" if infer else "train", seq_len=seq_len,
                                                              new_tokens=new_tokens), p)
    return estimate_inputs(i)


@dataclass(frozen=True)
class ConfigEstimate:
    """``estimate --config``: the memory of the plan an existing config runs, and how its "auto" was filled."""

    config: str
    estimate: Estimate
    problems: tuple  # warnings (errors raise)
    filled_lines: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.estimate.fits

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, **self.estimate.to_json(), "filled": list(self.filled_lines),
                "problems": [p.as_dict() for p in self.problems]}

    def text(self) -> str:
        head = [f'{self.config}: "auto" filled as the HF Trainer will: {x}' for x in self.filled_lines]
        return "\n".join(head + [self.estimate.text()])


def estimate_config(config: str, model: str | ModelSpec, gpu: str | GPU, *, nodes: int | None = None,
                    gpus_per_node: int | None = None, hostfile: str | None = None, training_args: str | None = None,
                    given: dict[str, Any] | None = None) -> ConfigEstimate:
    """Size the DeepSpeed config file ``config`` for a model and cluster (the CI gate on real configs).
    ``given``: the plan knobs the caller set; only those a config does not say (seq_len, new_tokens,
    checkpointing, pp, allocator) or that fill its "auto" (micro_batch, grad_accum, precision) may be given."""
    from .knobs import BY_NAME

    given = dict(given or {})
    allowed = ("micro_batch", "grad_accum", "precision", "seq_len", "new_tokens", "checkpointing", "pp", "allocator",
               *FINETUNE_KNOBS)
    for name in given:
        if name not in allowed:
            flag = BY_NAME[name].flag if name in BY_NAME else name
            raise InputError(f"{flag} with --config: the config says this; drop {flag}, or edit the config "
                             f"(with --config only {', '.join(BY_NAME[k].flag for k in allowed)} apply)")
    n, gpn = cluster_shape(hostfile, nodes, gpus_per_node)
    v = validate(config, model=model, gpu=gpu, nodes=n, gpus_per_node=gpn, pp=given.get("pp", 1),
                 seq_len=given.get("seq_len"), new_tokens=given.get("new_tokens", 0),
                 checkpointing=given.get("checkpointing"), use_deepspeed=False, training_args=training_args,
                 micro_batch=given.get("micro_batch"), grad_accum=given.get("grad_accum"),
                 precision=given.get("precision"), allocator=given.get("allocator"),
                 finetune={k: given[k] for k in FINETUNE_KNOBS if k in given})
    if v.errors:
        raise InputError(f"{config} has {len(v.errors)} problem(s) (qwen-ds validate {config} lists them); "
                         "no estimate", detail=problems_text(v.problems, config))
    if v.memory is None:
        raise InputError(f"{config}: no estimate ({'; '.join(p.message for p in v.problems) or 'no memory verdict'})")
    return ConfigEstimate(config, v.memory, v.problems, tuple(v.filled_lines()) if v.filled is not None else ())
