"""What DeepSpeed and torchao FP8 do with a model's parameter tensors: what AutoTP splits over the TP
ranks, what ZeRO-3 gathers at once and keeps persistent, what the FP8 runtime converts to float8.

models/ knows shapes and counts only; the rules here (DeepSpeed 0.19.8, torchao float8 as the runtime
uses it) are read off the same tensor lists (models.counts.kind_tensors), so the estimator, the planner,
validate and the runtime agree on them. No torch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from .models.counts import count_params, kind_counts, kind_tensors, sum_tensors
from .models.spec import MOE, ModelSpec


#: Linear layers the FP8 runtime (torchao float8) keeps in bf16, as module-path suffixes: the output head
#: (loss precision), MoE routers and the shared-expert gate (tiny, precision-sensitive).
FP8_KEEP_BF16 = ("lm_head", "mlp.gate", "router", "shared_expert_gate")


def linear_projection(module_path: str) -> bool:
    """A decoder layer's nn.Linear projection (q/k/v/o, gate/up/down, shared expert, in_proj_qkvz/ba,
    out_proj). Routed experts are fused 3-D tensors in transformers 5, not nn.Linear; routers, norms
    and conv1d are no projections."""
    return "proj" in module_path.rsplit(".", 1)[-1] and "experts" not in module_path.split(".")


def fp8_converts(module_path: str) -> bool:
    """Whether the FP8 runtime runs this Linear in float8: every projection but the ones of
    FP8_KEEP_BF16; torchao leaves the routed experts (and so their FLOPs) in bf16."""
    return linear_projection(module_path) and not module_path.endswith(FP8_KEEP_BF16)


def fp8_matmul_params(s: ModelSpec) -> int:
    """Parameters per token whose matmuls the FP8 runtime runs in float8 (see fp8_converts)."""
    return sum_tensors(s, lambda module, n: fp8_converts(module))


def autotp_shards(module_path: str) -> bool:
    """Whether DeepSpeed's AutoTP (0.19.8, inference and training) splits this decoder-layer tensor over the
    TP ranks: the Linear projections with their biases. Norms (q_norm/k_norm too), MoE routers and the
    routed experts stay whole on every rank: measured on CPU with init_inference (tests/test_runtime.py),
    e.g. tiny Qwen3-MoE TP 2 keeps all 98,304 expert weights per rank, and with training's
    ``tensor_parallel.autotp_size`` (tests/test_autotp_training.py). Embedding and head: autotp_head_split."""
    return linear_projection(module_path)


def autotp_sharded_params(s: ModelSpec, layers: Iterable[int] | None = None) -> int:
    """Parameters of these decoder layers (all by default) that AutoTP splits (autotp_shards)."""
    return sum_tensors(s, lambda module, n: autotp_shards(module), layers)


def autotp_head_split(s: ModelSpec, training: bool) -> int:
    """Elements of the embedding / output head that AutoTP splits over the TP ranks (on the last stage).

    Inference (init_inference, heuristic AutoTP): none, both stay whole.
    Training (``tensor_parallel.autotp_size``): DeepSpeed 0.19.8 follows the HF tp_plan
    (engine._apply_autotp_partitioning, module_inject/tp_plan_converter.py), whose ``lm_head:
    colwise_gather_output`` splits the head over the vocabulary. Untied, the head alone is split (the
    embedding's ``embedding_rowwise`` becomes a SKIP spec); tied, embedding and head share one
    vocab-parallel shard (VocabParallelEmbedding + VocabParallelLinear). Either way vocab x hidden."""
    return s.vocab_size * s.hidden_size if training and s.closed_form else 0


#: DeepSpeed 0.19.8 (module_inject/tp_plan_converter.py SUPPORTED_STYLES) rejects a whole HF tp_plan with a
#: style it does not know; the transformers 5 MoE plans carry "packed_colwise" and "moe_tp_experts" (fused
#: 3-D experts), so deepspeed.initialize raises ValueError for these families unless the config gives a
#: hand-written tensor_parallel.partition_config (tests/test_autotp_training.py checks the list).
AUTOTP_TRAIN_REFUSED = ("qwen3_moe", "qwen3_next", "qwen2_moe", "mixtral", "olmoe", "phimoe")


def autotp_unsupported(s: ModelSpec, training: bool = False) -> str | None:
    """Why DeepSpeed's AutoTP cannot run this model with TP > 1, or None (training: the
    ``tensor_parallel.autotp_size`` path of deepspeed.initialize; else init_inference)."""
    if training and s.family in AUTOTP_TRAIN_REFUSED:
        return (f"DeepSpeed 0.19.8 AutoTP training refuses the HuggingFace tp_plan of {s.family} (its fused experts' "
                "'packed_colwise' / 'moe_tp_experts' styles are not supported); use --tp 1 with --zero 3 (or give "
                "tensor_parallel.partition_config by hand)")
    if s.family == "qwen3_next":
        return ("DeepSpeed 0.19.8 AutoTP splits the Gated DeltaNet projections but not the layer's head counts, conv1d "
                "or A_log, so the layer fails in its reshape; use --tp 1 with --zero 3 (weights sharded over the GPUs, "
                "--offload-param cpu if they still do not fit)")
    return None


def gathered_tensors(s: ModelSpec, threshold: int) -> int:
    """Parameter tensors ZeRO-3 fetches (all-gathers) each time their module runs: those at or above
    ``stage3_param_persistence_threshold``, the embedding, and the output head when it is not tied."""
    per_layer = sum(count * sum(1 for _, n in kind_tensors(s, kind) if n >= threshold)
                    for kind, count in kind_counts(s).items())
    return per_layer + 1 + (0 if s.tie_embeddings else 1)


def persistent_params(s: ModelSpec, threshold: int) -> int:
    """Elements of parameter tensors of at most ``stage3_param_persistence_threshold`` elements: ZeRO-3
    keeps these unpartitioned on every rank (parameter_offload.py mark_persistent_parameters, ds_persist)."""
    small = sum_tensors(s, lambda module, n: n <= threshold)
    return small + (s.hidden_size if s.hidden_size <= threshold else 0)


def persistent_split(s: ModelSpec, plan, threshold: int) -> tuple[int, int]:
    """(frozen, trained) elements of the tensors ZeRO-3 keeps whole on every rank (see persistent_params) under the
    plan's fine-tuning method (qwen_ds.knobs.Plan: finetune, lora_*, freeze_layers, trainable_modules): a trained one
    also gets a full-size gradient. LoRA adds its small adapter tensors (A [r, in], B [out, r]) to the trained side;
    freeze trains the small tensors of its layers."""
    from .models.finetune import freeze_selection, lora_tensors

    base = persistent_params(s, threshold)
    if plan.finetune == "full":
        return 0, base
    if plan.finetune == "freeze":
        layers, keep = freeze_selection(s, plan.freeze_layers, plan.trainable_modules)
        trained = sum_tensors(s, lambda module, n: n <= threshold and keep(module, n), layers)
        return base - trained, trained
    adapters = sum(count * sum(n for _, n in lora_tensors(s, plan.lora_targets, plan.lora_rank, kind) if n <= threshold)
                   for kind, count in kind_counts(s).items())
    return base, adapters


def largest_trained_gathered(s: ModelSpec, plan) -> int:
    """Elements of the largest ZeRO-3 gathered unit that produces gradients (its full-size gradient exists before
    the reduce-scatter). Full training: largest_gathered. LoRA: one adapter tensor (peft's lora_A / lora_B are
    modules of their own), or all adapters inside an MoE block, which ZeRO-3 gathers as one leaf module. Freeze: the
    largest unit of the trained tensors of its layers (never the frozen embedding or head)."""
    from .models.finetune import freeze_selection, lora_tensors

    if plan.finetune == "full" or not s.closed_form:
        return largest_gathered(s)[0]
    best = 0
    if plan.finetune == "freeze":
        layers, keep = freeze_selection(s, plan.freeze_layers, plan.trainable_modules)
        for kind in kind_counts(s, layers):
            units: dict[str, int] = {}
            for module, n in kind_tensors(s, kind):
                if keep(module, n):
                    key = gathered_unit(kind, module)
                    units[key] = units.get(key, 0) + n
            best = max([best, *units.values()])
        return best
    for kind in kind_counts(s):  # each adapter tensor is its own unit, but inside an MoE block they are one
        tensors = lora_tensors(s, plan.lora_targets, plan.lora_rank, kind)
        in_block = [gathered_unit(kind, path) == MOE_BLOCK_UNIT for path, _ in tensors]
        block = sum(n for (_, n), b in zip(tensors, in_block) if b)
        best = max([best, block, *(n for (_, n), b in zip(tensors, in_block) if not b)])
    return best


#: model_type -> the transformers (5.x) class of its sparse MoE block, one per decoder layer with experts
#: (modeling_<model_type>.py; tests/test_leaf_modules.py checks each name against the installed transformers).
#: DeepSpeed matches a leaf_module class entry by class name or by module.qualname (utils/z3_leaf_module.py).
MOE_BLOCK_CLASSES = {
    "qwen3_moe": "Qwen3MoeSparseMoeBlock",
    "qwen3_next": "Qwen3NextSparseMoeBlock",
    "qwen2_moe": "Qwen2MoeSparseMoeBlock",
    "mixtral": "MixtralSparseMoeBlock",
    "olmoe": "OlmoeSparseMoeBlock",
    "phimoe": "PhimoeSparseMoeBlock",
}
#: config.json keys that set the expert count of the families without a closed form (0 = no MoE block)
_EXPERT_KEYS = ("num_experts", "num_local_experts")


def zero3_leaf_classes(s: ModelSpec) -> tuple[str, ...]:
    """Class names of the modules ZeRO-3 must treat as leaf modules for this model: its sparse MoE block,
    so that the whole block (router + every expert) is gathered when it is entered, the same on every
    rank, instead of per-submodule fetches that follow which experts this rank's tokens hit (hangs /
    crawls reported with Qwen3-MoE, Qwen3-Next, Mixtral). Empty for a dense model or an MoE family
    whose layers are all dense (mlp_only_layers, num_experts 0). gen-config writes them as
    ``zero_optimization.leaf_module.classes`` under ZeRO-3."""
    name = MOE_BLOCK_CLASSES.get(s.family)
    if name is None:
        return ()
    if s.closed_form:
        return (name,) if s.n_moe_layers else ()
    experts = [s.config.get(k) for k in _EXPERT_KEYS if k in s.config]
    if any(isinstance(n, int) and not isinstance(n, bool) and n == 0 for n in experts):
        return ()
    return (name,)


MOE_BLOCK_UNIT = "mlp (MoE block)"


def gathered_unit(kind: tuple[str, str], module: str) -> str:
    """The unit ZeRO-3 gathers a layer tensor with: its module, or the whole MoE block of an MoE layer (a leaf
    module, see zero3_leaf_classes)."""
    return MOE_BLOCK_UNIT if kind[1] == MOE and module.startswith("mlp") else module


@lru_cache(maxsize=256)
def largest_gathered(s: ModelSpec) -> tuple[int, str]:
    """(elements, module) of the largest unit ZeRO-3 gathers at once: one module's own parameters, or a
    whole MoE block (gen-config's zero_optimization.leaf_module and the runtime make MoE blocks ZeRO-3 leaf
    modules, see zero3_leaf_classes, so they are fetched as one).
    Without closed-form counts: the embedding or the head."""
    if not s.closed_form:
        c = count_params(s)
        return max(c.embedding, c.lm_head), "embed_tokens"
    modules: dict[str, int] = {"embed_tokens": s.vocab_size * s.hidden_size}
    if not s.tie_embeddings:
        modules["lm_head"] = s.vocab_size * s.hidden_size
    for kind in kind_counts(s):
        per_module: dict[str, int] = {}
        for module, n in kind_tensors(s, kind):
            key = gathered_unit(kind, module)
            per_module[key] = per_module.get(key, 0) + n
        for key, n in per_module.items():
            if n > modules.get(key, 0):
                modules[key] = n
    name = max(modules, key=modules.__getitem__)
    return modules[name], name
