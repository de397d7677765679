"""Who runs the config: DeepSpeed directly (qwen-ds launch, deepspeed.initialize), the HF Trainer
(and LLaMA-Factory, axolotl, TRL on top of it), or an accelerate loop.

The HF Trainer fills ``"auto"`` from its TrainingArguments and refuses a config whose concrete values
differ from them (transformers ``HfTrainerDeepSpeedConfig.trainer_config_process`` /
``trainer_config_finalize``); accelerate refuses an optimizer in both the config and the code. So
for them the config carries ``"auto"`` exactly where HF fills it, and the values go into the
arguments written beside it (training_args.json, a LLaMA-Factory YAML) instead. ``hf_fill`` is the
same filling, done here, so validate and estimate can read an ``"auto"`` config as HF will run it.
"""

from __future__ import annotations

import copy
import json
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from .errors import InputError, one_line
from .knobs import Plan

CONSUMERS = ("deepspeed", "hf-trainer", "accelerate")


def launch_allocator(consumer: str) -> str:
    """The CUDA allocator (knobs.ALLOCATORS) a consumer's runs get: qwen-ds launch sets expandable segments; the
    HF Trainer / accelerate are launched by their own tools, with torch's default allocator."""
    return "expandable" if consumer == "deepspeed" else "default"

#: keys HfTrainerDeepSpeedConfig fills when they are "auto" (transformers 5.x), in its order
HF_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
HF_FILLED = HF_BATCH_KEYS + (
    "gradient_clipping", "optimizer.params.lr", "optimizer.params.betas", "optimizer.params.eps",
    "optimizer.params.weight_decay", "scheduler.params.warmup_min_lr", "scheduler.params.warmup_max_lr",
    "fp16.enabled", "bf16.enabled", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold", "scheduler.params.total_num_steps",
    "scheduler.params.warmup_num_steps",
)
#: filled only for ZeRO-3 configs (an "auto" there under stage < 3 reaches DeepSpeed unfilled)
HF_ZERO3_ONLY = ("zero_optimization.stage3_prefetch_bucket_size",
                 "zero_optimization.stage3_param_persistence_threshold")


@dataclass(frozen=True)
class TrainArgs:
    """The TrainingArguments fields a plan fixes (the names are transformers'); the HF Trainer fills
    the config's "auto" from these, so the estimate holds for exactly these arguments."""

    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    warmup_steps: int = 100
    max_steps: int = 1000
    bf16: bool = True
    fp16: bool = False
    gradient_checkpointing: bool = True
    deepspeed: str = "ds_config.json"

    @classmethod
    def of(cls, plan: Plan, opts: Any, deepspeed: str) -> "TrainArgs":
        """From a plan and the render.ConfigOptions it was rendered with."""
        return cls(per_device_train_batch_size=plan.micro_batch, gradient_accumulation_steps=plan.grad_accum,
                   learning_rate=opts.lr, adam_beta1=opts.betas[0], adam_beta2=opts.betas[1], adam_epsilon=opts.eps,
                   weight_decay=opts.weight_decay, max_grad_norm=opts.gradient_clipping, warmup_steps=opts.warmup_steps,
                   max_steps=opts.total_steps, bf16=plan.precision in ("bf16", "fp8"), fp16=plan.precision == "fp16",
                   gradient_checkpointing=plan.checkpointing, deepspeed=deepspeed)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.gradient_checkpointing:  # reentrant checkpointing breaks ZeRO-3's parameter gathering
            out["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        return out

    def llamafactory_yaml(self, seq_len: int, plan: Plan | None = None) -> str:
        """The LLaMA-Factory training-YAML keys this plan fixes (merge them into your own YAML).
        LLaMA-Factory turns gradient checkpointing on unless disable_gradient_checkpointing is set."""
        rows = [
            *finetune_rows(plan),
            ("cutoff_len", seq_len),
            ("per_device_train_batch_size", self.per_device_train_batch_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("learning_rate", self.learning_rate),
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
            ("adam_epsilon", self.adam_epsilon),
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("warmup_steps", self.warmup_steps),
            ("max_steps", self.max_steps),
            ("bf16", self.bf16),
            ("fp16", self.fp16),
            ("disable_gradient_checkpointing", not self.gradient_checkpointing),
            ("deepspeed", self.deepspeed),
        ]
        lines = ["# qwen-ds gen-config --for hf-trainer: merge into your LLaMA-Factory training YAML"]
        return "\n".join(lines + [f"{k}: {json.dumps(v)}" for k, v in rows]) + "\n"


def finetune_rows(plan: Plan | None) -> list[tuple[str, Any]]:
    """LLaMA-Factory's fine-tuning keys for the plan: finetuning_type and the LoRA / QLoRA / freeze settings
    (its lora_target spells peft's all-linear as ``all``; its quantization_method calls bitsandbytes ``bnb``).
    finetune_from_yaml reads them back."""
    method = plan.finetune if plan is not None else "full"
    if method == "full":
        return [("finetuning_type", "full")]
    if method == "freeze":
        return [("finetuning_type", "freeze"), ("freeze_trainable_layers", plan.freeze_layers),
                ("freeze_trainable_modules", plan.trainable_modules)]
    target = "all" if plan.lora_targets.strip().lower() == "all-linear" else plan.lora_targets
    rows = [("finetuning_type", "lora"), ("lora_rank", plan.lora_rank),
            ("lora_alpha", plan.lora_alpha or 2 * plan.lora_rank), ("lora_dropout", 0.0), ("lora_target", target)]
    if method == "qlora":
        rows += [("quantization_bit", 4), ("quantization_method", "bnb"), ("quantization_type", "nf4"),
                 ("double_quantization", True)]
    return rows


#: LLaMA-Factory's FinetuningArguments defaults (a YAML without finetuning_type trains LoRA r8 on all Linears)
LF_FINETUNE_DEFAULTS = {"finetuning_type": "lora", "lora_rank": 8, "lora_alpha": None, "lora_target": "all",
                        "freeze_trainable_layers": 2, "freeze_trainable_modules": "all", "quantization_bit": None}


def finetune_from_yaml(data: dict[str, Any], where: str) -> dict[str, Any]:
    """The plan knobs (finetune, lora_rank, lora_alpha, lora_targets, freeze_layers, trainable_modules) a
    LLaMA-Factory training YAML trains with, its defaults where it is silent: the keys finetune_rows writes."""
    v = {k: d if data.get(k) is None else data[k] for k, d in LF_FINETUNE_DEFAULTS.items()}
    kind = str(v["finetuning_type"]).lower()
    if kind not in ("full", "lora", "freeze"):
        raise InputError(f"{where}: finetuning_type {v['finetuning_type']!r}; qwen-ds sizes full, lora (with "
                         "quantization_bit 4: QLoRA) and freeze")
    if kind == "full":
        return {"finetune": "full"}
    if kind == "freeze":
        return {"finetune": "freeze", "freeze_layers": _lf_int(where, "freeze_trainable_layers", v),
                "trainable_modules": str(v["freeze_trainable_modules"])}
    bits = v["quantization_bit"]
    if bits not in (None, 4):
        raise InputError(f"{where}: quantization_bit {bits!r}; qwen-ds sizes 16-bit LoRA and 4-bit QLoRA bases "
                         "(quantization_bit 4, or none)")
    target = str(v["lora_target"]).strip()
    return {"finetune": "qlora" if bits == 4 else "lora", "lora_rank": _lf_int(where, "lora_rank", v),
            "lora_alpha": None if v["lora_alpha"] is None else _lf_int(where, "lora_alpha", v),
            "lora_targets": "all-linear" if target.lower() == "all" else target}


def _lf_int(where: str, name: str, values: dict[str, Any]) -> int:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {name} is {value!r}; it must be an integer")
    return value


def check_consumer(consumer: str, plan: Plan, mode: str) -> None:
    if consumer not in CONSUMERS:
        raise InputError(f"--for {consumer!r}: choose one of {', '.join(CONSUMERS)}")
    if consumer == "deepspeed":
        return
    if mode != "train":
        raise InputError(f"--for {consumer} with --mode {mode}: the HF Trainer / accelerate flavours are training "
                         "configs; use --for deepspeed for inference")
    if plan.loss != "hf":
        raise InputError(f"--for {consumer} with --loss {plan.loss}: the HF Trainer and accelerate compute the loss in "
                         "the model's forward (full fp32 logits); use --loss hf, or --for deepspeed with qwen-ds "
                         "launch")
    if plan.pp > 1 or plan.tp > 1:
        raise InputError(f"--for {consumer} with --tp {plan.tp} --pp {plan.pp}: the HF Trainer and accelerate run "
                         "data-parallel DeepSpeed (ZeRO); use --tp 1 --pp 1")


def _node(cfg: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """(the object holding the last key, that key), or (None, key) where a step is missing."""
    *parents, key = dotted.split(".")
    node: Any = cfg
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), key


def _stage3(cfg: dict[str, Any]) -> bool:
    z = cfg.get("zero_optimization")
    return isinstance(z, dict) and z.get("stage") == 3


def for_consumer(cfg: dict[str, Any], consumer: str) -> dict[str, Any]:
    """The DeepSpeed config rendered for a plan, as ``consumer`` wants it."""
    out = copy.deepcopy(cfg)
    if consumer == "deepspeed":
        return out
    out.pop("activation_checkpointing", None)  # HF and accelerate checkpoint through the model, not this block
    if consumer == "accelerate":  # the loop brings its own optimizer and scheduler
        out.pop("optimizer", None)
        out.pop("scheduler", None)
        return out
    stage3 = _stage3(out)
    for dotted in HF_FILLED:
        node, key = _node(out, dotted)
        if node is not None and key in node and (stage3 or dotted not in HF_ZERO3_ONLY):
            node[key] = "auto"
    return out


def hf_fill(cfg: dict[str, Any], args: TrainArgs, world: int, hidden_size: int) -> dict[str, Any]:
    """``cfg`` with "auto" filled as the HF Trainer fills it from ``args`` on ``world`` ranks (dp = world
    for ZeRO); concrete values stay (the Trainer would report those that differ as mismatches)."""
    out = copy.deepcopy(cfg)
    h2 = hidden_size * hidden_size
    values = {
        "train_micro_batch_size_per_gpu": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "train_batch_size": world * args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "gradient_clipping": args.max_grad_norm,
        "optimizer.params.lr": args.learning_rate,
        "optimizer.params.betas": [args.adam_beta1, args.adam_beta2],
        "optimizer.params.eps": args.adam_epsilon,
        "optimizer.params.weight_decay": args.weight_decay,
        "scheduler.params.warmup_min_lr": 0,
        "scheduler.params.warmup_max_lr": args.learning_rate,
        "fp16.enabled": args.fp16,
        "bf16.enabled": args.bf16,
        "zero_optimization.reduce_bucket_size": h2,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * h2),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden_size,
        "scheduler.params.total_num_steps": args.max_steps,
        "scheduler.params.warmup_num_steps": max(1, args.warmup_steps),
    }
    stage3 = _stage3(out)
    for dotted in HF_FILLED:
        node, key = _node(out, dotted)
        if node is not None and node.get(key) == "auto" and (stage3 or dotted not in HF_ZERO3_ONLY):
            node[key] = values[dotted]
    return out


def auto_keys(cfg: Any, path: str = "") -> list[str]:
    """Dotted keys whose value is "auto"."""
    if isinstance(cfg, dict):
        return [k for key, v in cfg.items() for k in auto_keys(v, f"{path}.{key}" if path else str(key))]
    return [path] if cfg == "auto" else []


def hf_fillable(cfg: dict[str, Any]) -> list[str]:
    """The "auto" keys of ``cfg`` the HF Trainer fills (the rest stay "auto" and reach DeepSpeed)."""
    stage3 = _stage3(cfg)
    return [k for k in auto_keys(cfg) if k in HF_FILLED and (stage3 or k not in HF_ZERO3_ONLY)]


# --------------------------------------------------------------------------- "auto" in



@dataclass(frozen=True)
class Filled:
    """An "auto" config as the HF Trainer will run it: the config with "auto" filled, the arguments it
    was filled from, where each argument came from, and what the arguments say about the plan."""

    config: dict[str, Any]
    args: TrainArgs
    origins: dict[str, str]  # TrainArgs field -> where its value came from
    keys: tuple[str, ...]  # the dotted keys that were "auto" and are now filled
    seq_len: int | None = None  # LLaMA-Factory cutoff_len
    checkpointing: bool | None = None  # from the arguments file, when it says
    #: what trains, from a LLaMA-Factory YAML (finetune_from_yaml); None: the file does not say (full training)
    finetune: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        """One line per filled key: its value and where that came from."""
        field_of = {"train_micro_batch_size_per_gpu": "per_device_train_batch_size",
                    "gradient_accumulation_steps": "gradient_accumulation_steps", "gradient_clipping": "max_grad_norm",
                    "optimizer.params.lr": "learning_rate", "scheduler.params.warmup_max_lr": "learning_rate",
                    "optimizer.params.eps": "adam_epsilon", "optimizer.params.weight_decay": "weight_decay",
                    "optimizer.params.betas": "adam_beta1", "bf16.enabled": "bf16", "fp16.enabled": "fp16",
                    "scheduler.params.total_num_steps": "max_steps",
                    "scheduler.params.warmup_num_steps": "warmup_steps"}
        out = []
        for key in self.keys:
            node, last = _node(self.config, key)
            value = json.dumps(node.get(last)) if node is not None else "?"
            f = field_of.get(key)
            if key == "train_batch_size":
                why = "world x micro-batch x grad-accum"
            elif key.startswith("zero_optimization."):
                why = "from the model's hidden size"
            elif key == "scheduler.params.warmup_min_lr":
                why = "the HF Trainer's constant"
            else:
                why = f"{f} from {self.origins.get(f, 'the default')}"
            out.append(f"{key} = {value} ({why})")
        return out


def read_train_args(path: str, flag: str = "--training-args") -> dict[str, Any]:
    """A training_args.json (TrainingArguments fields) or a LLaMA-Factory / axolotl YAML, as a dict."""
    from .fileio import read_text

    text = read_text(path, flag, "pass a training_args.json or a LLaMA-Factory training YAML")
    where = f"{flag} {one_line(path)}"
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml.YAMLError, JSONDecodeError, RecursionError
        raise InputError(f"{where}: not readable as {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'} "
                         f"({one_line(exc)[:120]}); pass a training_args.json or a LLaMA-Factory training "
                         "YAML") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of argument names to values, got {type(data).__name__}")
    return data


def _typed(where: str, name: str, value: Any, kind: type) -> Any:
    """An argument's value with the type TrainArgs has; the batch and precision fields strictly, the
    schedule ones leniently (HF fills warmup / total steps at run time; they do not change memory)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, str) and kind is not bool:  # YAML 1.1 reads 1e-4 as a string
        try:
            value, number = float(value), True
        except ValueError:
            number = False
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if number and float(value).is_integer() and value >= 1:
            return int(value)
        raise InputError(f"{where}: {name} is {value!r}; it must be an integer >= 1")
    if kind is int and number:  # warmup_steps may be a ratio (< 1), max_steps -1 (epochs): placeholders
        return max(1, int(value))
    if kind is float and number:
        return float(value)
    raise InputError(f"{where}: {name} is {value!r}; it must be {'true or false' if kind is bool else 'a number'}")


def fill_auto(cfg: dict[str, Any], world: int, hidden_size: int, *, training_args: str | None = None,
              micro_batch: int | None = None, grad_accum: int | None = None, precision: str | None = None,
              default_precision: str = "bf16") -> Filled:
    """``cfg`` with the "auto" the HF Trainer fills filled, from (first wins) ``micro_batch`` /
    ``grad_accum`` / ``precision`` (flags), the arguments file, else qwen-ds's defaults (micro-batch 1,
    grad-accum 1, the GPU's precision). "auto" the HF Trainer does not fill stays (validate refuses it)."""
    base = TrainArgs(bf16=default_precision in ("bf16", "fp8"), fp16=default_precision == "fp16")
    kinds = {f: type(v) for f, v in asdict(base).items()}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {f: "the qwen-ds default" for f in kinds}
    seq_len = checkpointing = finetune = None
    if training_args:
        where = f"--training-args {one_line(training_args)}"
        data = read_train_args(training_args)
        lf = training_args.endswith((".yaml", ".yml"))
        for name, kind in kinds.items():
            if name in data and data[name] is not None and name != "deepspeed":
                values[name] = _typed(where, name, data[name], kind)
                origins[name] = where
        if lf:  # LLaMA-Factory turns gradient checkpointing on unless disabled
            checkpointing = not bool(data.get("disable_gradient_checkpointing", False))
            finetune = finetune_from_yaml(data, where)
            if isinstance(data.get("cutoff_len"), int) and data["cutoff_len"] > 0:
                seq_len = data["cutoff_len"]
        else:  # transformers 5.x also spells it activation_checkpointing (gradient_checkpointing goes in v6)
            for key in ("gradient_checkpointing", "activation_checkpointing"):
                if isinstance(data.get(key), bool):
                    checkpointing = data[key]
        if values.get("bf16") or values.get("fp16"):  # the file chose a precision: the other one is off
            values.setdefault("bf16", False)
            values.setdefault("fp16", False)
            origins["bf16"] = origins["fp16"] = where
    for name, flag, value in (("per_device_train_batch_size", "--micro-batch", micro_batch),
                              ("gradient_accumulation_steps", "--grad-accum", grad_accum)):
        if value is not None:
            values[name], origins[name] = value, flag
    if precision is not None:
        values.update(bf16=precision in ("bf16", "fp8"), fp16=precision == "fp16")
        origins["bf16"] = origins["fp16"] = "--precision"
    args = dataclasses.replace(base, **values)
    keys = tuple(hf_fillable(cfg))
    return Filled(hf_fill(cfg, args, world, hidden_size), args, origins, keys, seq_len, checkpointing, finetune)


def as_run(cfg: dict[str, Any], world: int, plan: Any = None) -> dict[str, Any]:
    """For checks before a launch: ``cfg`` with the "auto" the HF Trainer fills filled from the
    plan.json's train_args (a PlanDocument), else from TrainArgs' defaults; ``cfg`` itself without any."""
    if not hf_fillable(cfg):
        return cfg
    names = {f.name for f in dataclasses.fields(TrainArgs)}
    given = (plan.train_args or {}) if plan is not None else {}
    args = TrainArgs(**{k: v for k, v in given.items() if k in names})
    config = plan.model.config if plan is not None and plan.model is not None else None
    hidden = config.get("hidden_size") if isinstance(config, dict) else None
    return hf_fill(cfg, args, world, hidden if isinstance(hidden, int) and hidden > 0 else 1)
