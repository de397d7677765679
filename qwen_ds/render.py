"""Plan -> DeepSpeed JSON, through the Jinja templates in the top-level templates/ folder.

render_context() computes every value in Python (bucket sizes from the model's hidden size as
integers, batch keys consistent with the cluster); the templates only place them, each through
``tojson``. The rendered text is parsed back, `--set` overrides applied, and the result is what
gen-config validates and writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, finite_number, finite_positive, one_line
from .hardware import Cluster
from .models.spec import ModelSpec
from .knobs import Plan, Workload
from .sharding import zero3_leaf_classes

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"  # inside an installed wheel
SOURCE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"  # source checkout / editable


def default_template_dir() -> Path:
    return PACKAGE_TEMPLATES if PACKAGE_TEMPLATES.is_dir() else SOURCE_TEMPLATES


@dataclass(frozen=True)
class ConfigOptions:
    """Knobs that go into the JSON but do not change memory or speed."""

    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    warmup_steps: int = 100
    total_steps: int = 1000
    gradient_clipping: float = 1.0
    steps_per_print: int = 10
    nvme_path: str | None = None
    pin_memory: bool = True
    communication_data_type: str | None = None
    max_out_tokens: int = 1024
    #: fp16 dynamic loss scaling (DeepSpeed defaults)
    initial_scale_power: int = 16
    loss_scale_window: int = 1000
    hysteresis: int = 2
    min_loss_scale: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse what DeepSpeed cannot use: a NaN lr trains to NaN weights, WarmupDecayLR refuses
        warmup_num_steps < 1, and a negative clipping norm silently turns clipping off."""
        finite_positive("--lr", self.lr)
        finite_positive("eps", self.eps)
        finite_number("weight_decay", self.weight_decay, low_ok=True)
        finite_number("--gradient-clipping", self.gradient_clipping, low_ok=True)  # 0 = no clipping
        if len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas):  # NaN fails 0 <= b
            raise InputError(f"betas {list(self.betas)}: must be two numbers in [0, 1) (Adam divides by 1 - beta^t)")
        _steps("--warmup-steps", self.warmup_steps, 1, "DeepSpeed's WarmupDecayLR refuses warmup_num_steps < 1")
        _steps("--total-steps", self.total_steps, self.warmup_steps, f"at least --warmup-steps {self.warmup_steps}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _steps(flag: str, value: object, low: int, why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{flag} {value}: must be an integer >= {low} ({why})")


def fp8_recipe(plan: Plan) -> dict[str, Any] | None:
    """DeepSpeed has no FP8 key: an FP8 plan runs a bf16 DeepSpeed config and the runtime applies this."""
    if plan.precision != "fp8":
        return None
    return {"backend": "torchao.float8", "recipe": "tensorwise", "deepspeed_dtype": "bf16",
            "modules": "nn.Linear layers of attention and MLP (not lm_head, router or embeddings)"}


def ds_dtype(plan: Plan) -> str:
    return "bf16" if plan.precision in ("bf16", "fp8") else plan.precision


def _offload(device: str, opts: ConfigOptions, kind: str) -> dict[str, Any] | None:
    if device == "none":
        return None
    block: dict[str, Any] = {"device": device, "pin_memory": opts.pin_memory, "nvme_path": None, "ratio": None}
    if device == "nvme":
        if not opts.nvme_path:
            raise InputError(f"--offload-{kind} nvme needs --nvme-path "
                             "(a directory on a local NVMe drive of every node)")
        block.update(nvme_path=opts.nvme_path, buffer_count=5 if kind == "param" else 4,
                     buffer_size=100_000_000, max_in_cpu=1_000_000_000)
    return block


def render_context(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan,
                   opts: ConfigOptions) -> dict[str, Any]:
    world = cluster.world_size
    dp = plan.batch_ranks(world)
    buckets = plan.buckets(model.hidden_size)
    dtype = ds_dtype(plan)
    return {
        "mode": workload.mode,
        "batch": {"micro_batch": plan.micro_batch, "grad_accum": plan.grad_accum,
                  "train_batch_size": plan.micro_batch * plan.grad_accum * dp},
        "precision": {"dtype": dtype, "loss_scale": 0, "initial_scale_power": opts.initial_scale_power,
                      "loss_scale_window": opts.loss_scale_window, "hysteresis": opts.hysteresis,
                      "min_loss_scale": opts.min_loss_scale},
        "zero": {
            "stage": plan.zero_stage,
            "offload_optimizer": _offload(plan.offload_optimizer, opts, "optimizer"),
            "offload_param": _offload(plan.offload_param, opts, "param"),
            "overlap_comm": plan.overlap_comm,
            "contiguous_gradients": True,
            "reduce_bucket_size": buckets["reduce_bucket_size"],
            "allgather_bucket_size": buckets["allgather_bucket_size"],
            "prefetch_bucket_size": buckets["prefetch_bucket_size"],
            "param_persistence_threshold": buckets["param_persistence_threshold"],
            "max_live_parameters": plan.max_live_parameters,
            "max_reuse_distance": plan.max_reuse_distance,
            "sub_group_size": plan.sub_group_size,
            "gather_16bit_weights_on_model_save": plan.zero_stage == 3,
            "hpz_partition_size": plan.hpz_partition_size,
            "quantized_weights": plan.quantized_weights,
            "quantized_gradients": plan.quantized_gradients,
            # stage 1/2 with CPU optimizer offload: spreads the gradient copies over ranks
            "round_robin_gradients": plan.zero_stage in (1, 2) and plan.offload_optimizer != "none",
            # ZeRO-3: MoE blocks as leaf modules (DeepSpeed's engine applies zero_optimization.leaf_module)
            "leaf_module": {"classes": list(zero3_leaf_classes(model))}
            if plan.zero_stage == 3 and zero3_leaf_classes(model) else None,
        },
        "optimizer": {"type": "AdamW", "lr": opts.lr, "betas": list(opts.betas), "eps": opts.eps,
                      "weight_decay": opts.weight_decay},
        "scheduler": {"warmup_steps": opts.warmup_steps, "total_steps": opts.total_steps},
        "activation_checkpointing": {"partition_activations": False, "cpu_checkpointing": False,
                                     "number_checkpoints": model.num_layers} if plan.checkpointing else None,
        # stages and partition are for the training script (DeepSpeed parses them, PipelineModule takes them):
        # runtime/pipeline.py partitions by parameters, as the estimator's stages
        "pipeline": {"stages": plan.pp, "partition": "parameters",
                     "activation_checkpoint_interval": 1 if plan.checkpointing else 0} if plan.pp > 1 else None,
        "tensor_parallel": {"autotp_size": plan.tp} if plan.tp > 1 else None,
        # peft models: trainers hand DeepSpeed their own optimizer over the adapters (QLoRA recipes use bitsandbytes'
        # paged 8-bit AdamW), which ZeRO refuses unless allowed; full training keeps DeepSpeed's check
        "allow_untested_optimizer": plan.finetune != "full",
        "infer": {"tp_size": plan.tp, "dtype": "int8" if plan.precision == "int8" else dtype,
                  "kernel_inject": False, "max_out_tokens": max(opts.max_out_tokens, workload.context_len)},
        "opts": asdict(opts),
    }


def template_name(workload: Workload, plan: Plan) -> str:
    if workload.mode == "train":
        return "train.json.j2"
    if plan.zero_stage == 3:
        return "zero_inference.json.j2"
    return "infer.json.j2"


def _environment(template_dir: Path):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    plain_tojson = env.filters["tojson"]

    def tojson(eval_ctx, value, indent=None):
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()  # names the misspelt variable, as a TemplateError
        return plain_tojson(eval_ctx, value, indent)

    tojson.jinja_pass_arg = plain_tojson.jinja_pass_arg
    env.filters["tojson"] = tojson
    return env


def render_text(context: dict[str, Any], name: str, template_dir: Path | None = None) -> str:
    import jinja2

    tdir = Path(template_dir) if template_dir else default_template_dir()
    try:
        return _environment(tdir).get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise InputError(f"--template-dir {one_line(tdir)}: no template {exc.name!r}; "
                         "copy the shipped templates/ and edit them") from None
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise InputError(f"template {name}{where} in {one_line(tdir)}: {one_line(exc)}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # e.g. a misspelt variable reaching a filter
        raise InputError(f"template {name} in {one_line(tdir)}: {type(exc).__name__}: {one_line(exc)[:200]}; "
                         "check its variable names") from None


def render(model: ModelSpec, cluster: Cluster, workload: Workload, plan: Plan, opts: ConfigOptions | None = None,
           template_dir: Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The DeepSpeed config dict for a plan (templates + --set overrides), not yet validated."""
    opts = opts or ConfigOptions()
    name = template_name(workload, plan)
    text = render_text(render_context(model, cluster, workload, plan, opts), name, template_dir)
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"template {name} rendered invalid JSON at line {exc.lineno}: {exc.msg}; "
                         "fix the template") from None
    for item in overrides or ():
        apply_override(cfg, item)
    return cfg


def _parse_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a bare string, e.g. --set zero_optimization.offload_param.device=cpu
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)  # 1e9 -> 1000000000: DeepSpeed's int fields reject fractional floats only
    return value


def apply_override(cfg: dict[str, Any], item: str) -> None:
    """--set a.b.c=VALUE (VALUE parsed as JSON, else a string); creates missing objects."""
    if "=" not in item:
        raise InputError(f"--set {one_line(item)!r}: expected KEY.PATH=VALUE, "
                         "e.g. zero_optimization.stage3_max_live_parameters=1e9")
    path, raw = item.split("=", 1)
    keys = [k for k in path.strip().split(".")]
    if not all(keys):
        raise InputError(f"--set {one_line(item)!r}: empty key in {path!r}; "
                         "use dotted keys like zero_optimization.stage")
    node = cfg
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise InputError(f"--set {one_line(item)!r}: {key!r} is {json.dumps(nxt)}, not an object")
        node = nxt
    node[keys[-1]] = _parse_value(raw.strip())
