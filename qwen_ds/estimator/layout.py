"""How the model is split over the cluster: DP x TP x PP degrees and the parameters one GPU owns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..errors import InputError
from ..hardware import Cluster
from ..models.finetune import freeze_params, linear_weights, lora_params
from ..models.counts import ParamCounts, count_params, layers_params
from ..models.spec import ModelSpec
from ..knobs import Plan
from ..sharding import autotp_head_split, autotp_sharded_params, autotp_unsupported


@dataclass(frozen=True)
class Layout:
    dp: int
    tp: int
    pp: int
    #: parameters one model-parallel rank owns on the heaviest pipeline stage: what AutoTP splits,
    #: divided by TP, plus what it keeps whole (embedding, head, norms, routers, routed experts)
    params_per_mp_rank: int
    #: decoder layers on the heaviest stage
    layers_per_stage: int
    #: indexes of the decoder layers of the heaviest stage (a range: counted per layer kind, not per layer)
    stage_layers: range
    first_stage: bool
    last_stage: bool
    #: of params_per_mp_rank, those AutoTP keeps whole on every TP rank
    whole_params: int = 0
    #: index of the heaviest pipeline stage (0 = first); under 1F1B it holds pp - stage micro-batches in flight
    stage: int = 0
    #: parameters of every pipeline stage (one entry without pipeline stages)
    stage_params: tuple[int, ...] = ()
    #: of params_per_mp_rank, those the optimizer updates (None: all; LoRA adapters, freeze's layers otherwise)
    trainable: int | None = None
    #: of params_per_mp_rank, base weights stored in 4 bits (QLoRA)
    quantized: int = 0

    @property
    def trained(self) -> int:
        """Parameters of the rank that have gradients, fp32 masters and Adam states."""
        return self.params_per_mp_rank if self.trainable is None else self.trainable


@lru_cache(maxsize=256)
def pipeline_weights(model: ModelSpec) -> tuple[int, ...]:
    """Parameters of each layer of the PipelineModule the runtime builds (runtime/pipeline.py), in order:
    embedding, each decoder layer, final norm, head. A tied head holds its own copy of the embedding on
    the last stage (DeepSpeed's TiedLayerSpec), with its gradients and optimizer states."""
    c = count_params(model)
    head = c.embedding if model.tie_embeddings else c.lm_head
    return (c.embedding, *(layers_params(model, [i]) for i in range(model.num_layers)), c.final_norm, head)


@lru_cache(maxsize=256)
def balanced_parts(weights: tuple[int, ...], parts: int) -> tuple[int, ...]:
    """Stage boundaries of DeepSpeed 0.19's PipelineModule partition_method "parameters": over contiguous
    splits of ``weights`` into ``parts`` stages, the dynamic programme of deepspeed.runtime.utils.
    partition_balanced, which minimises the spread (heaviest minus lightest stage) prefix by prefix, the later
    split winning ties. Reproduced here (no torch, numpy or deepspeed import) and checked against DeepSpeed
    by tests/test_pipeline_layout.py, so the estimator's heaviest stage is the one the runtime builds."""
    n = len(weights)
    if n <= parts:
        return tuple(min(p, n) for p in range(parts + 1))
    inf = float("inf")
    prefix = [0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    hi = [[inf] * (parts + 1) for _ in range(n + 1)]
    lo = [[inf] * (parts + 1) for _ in range(n + 1)]
    cost = [[inf] * (parts + 1) for _ in range(n + 1)]
    pos = [[0] * (parts + 1) for _ in range(n + 1)]
    hi[0][0] = cost[0][0] = 0
    for i in range(1, n + 1):
        for j in range(1, min(i, parts) + 1):
            for k in range(i):
                seg = prefix[i] - prefix[k]
                top, bottom = max(hi[k][j - 1], seg), min(lo[k][j - 1], seg)
                if cost[i][j] >= top - bottom:
                    cost[i][j], hi[i][j], lo[i][j], pos[i][j] = top - bottom, top, bottom, k
    bounds = [n]
    for j in range(parts, 0, -1):
        bounds.append(pos[bounds[-1]][j])
    return tuple(reversed(bounds))


def layout(model: ModelSpec, cluster: Cluster, plan: Plan, training: bool = False, stage: int | None = None) -> Layout:
    """Check the degrees tile the GPUs and the model; pick the pipeline stage with most parameters (or
    ``stage``). ``training``: AutoTP's training path (deepspeed.initialize with autotp_size) splits what
    the HF tp_plan says, and refuses MoE plans; inference (init_inference) follows its own rules."""
    world, tp, pp = cluster.world_size, plan.tp, plan.pp
    if world % (tp * pp):
        raise InputError(
            f"--tp {tp} x --pp {pp} = {tp * pp} does not divide the {world} GPUs "
            f"({cluster.nodes} nodes x {cluster.gpus_per_node}); choose degrees whose product divides {world}"
        )
    if tp > cluster.gpus_per_node:
        raise InputError(f"--tp {tp} exceeds --gpus-per-node {cluster.gpus_per_node}; keep tensor parallelism inside a "
                         "node")
    if model.num_heads % tp:
        raise InputError(f"--tp {tp} does not divide the {model.num_heads} attention heads of {model.name}; choose a "
                         "divisor")
    why = autotp_unsupported(model, training=training) if tp > 1 else None
    if why:
        raise InputError(f"--tp {tp}: {why}")
    if plan.hpz_partition_size > 1 and world % plan.hpz_partition_size:
        raise InputError(f"--hpz {plan.hpz_partition_size} does not divide the {world} GPUs; use a divisor (usually "
                         "--gpus-per-node)")
    if training and tp > 1 and pp > 1:
        raise InputError(f"--tp {tp} with --pp {pp} for training: DeepSpeed 0.19's AutoTP finds no tensor-parallel "
                         "policy in a PipelineModule (\"Not able to determine model policy automatically\") and its "
                         "pipeline grid has no TP axis; train with --tp or with --pp, not both")
    counts: ParamCounts = count_params(model)
    first, last, stage_params = True, True, ()
    if not counts.layers:  # meta-counted family: equal layers per stage, embedding first, head last
        if model.num_layers % pp:
            raise InputError(f"--pp {pp} does not divide the {model.num_layers} layers of {model.name}; "
                             "choose a divisor")
        per = model.num_layers // pp
        ends = [counts.embedding] + [0] * (pp - 2) + [counts.lm_head + counts.final_norm] if pp > 1 else [0]
        stage = max(range(pp), key=lambda s: ends[s]) if stage is None else stage
        idx, first, last = range(stage * per, (stage + 1) * per), stage == 0, stage == pp - 1
        n = counts.total * per // model.num_layers + ends[stage]
    elif pp == 1:
        per, idx, n, stage = model.num_layers, range(model.num_layers), counts.total, 0
    else:  # DeepSpeed's parameter-balanced partition of the runtime's PipelineModule
        weights = pipeline_weights(model)
        if pp > len(weights):
            raise InputError(f"--pp {pp} exceeds the {model.num_layers} layers + embedding, norm and head of "
                             f"{model.name}; lower --pp")
        bounds = balanced_parts(weights, pp)
        stage_params = tuple(sum(weights[bounds[s]:bounds[s + 1]]) for s in range(pp))
        stage = max(range(pp), key=lambda s: stage_params[s]) if stage is None else stage
        n = stage_params[stage]
        # spec i of 1..num_layers is decoder layer i - 1
        idx = range(max(bounds[stage], 1) - 1, min(bounds[stage + 1], model.num_layers + 1) - 1)
        per = len(idx)
        first, last = bounds[stage] == 0, bounds[stage + 1] == len(weights)
    if not counts.layers:  # meta-counted family: whole model as one block, all but embedding and head split
        n = counts.total if pp == 1 else n
        split = max(0, n - counts.embedding - counts.lm_head - counts.final_norm)
    else:
        split = autotp_sharded_params(model, idx)
        # AutoTP training also splits the head by the vocabulary (HF tp_plan; tied: with the embedding);
        # a PipelineModule has no HF tp_plan, so only without pipeline stages
        if tp > 1 and pp == 1:
            split += autotp_head_split(model, training)
    m = n - split + -(-split // tp)
    trainable, quantized, extra = finetune_shares(model, plan, m, counts.total)
    return Layout(plan.dp(world), tp, pp, m + extra, per, idx, first, last, n - split, stage, stage_params or (n,),
                  trainable, quantized)


def finetune_shares(model: ModelSpec, plan: Plan, m: int, total: int) -> tuple[int | None, int, int]:
    """(trainable, 4-bit, added) parameters of a rank that owns ``m`` of the model's ``total``: full training
    trains all; LoRA adds adapters (their share of the model's, r x (in + out) per targeted Linear) and trains only
    them; QLoRA also stores the base Linear weights in 4 bits; freeze trains its layers' share."""
    if plan.finetune == "full":
        return None, 0, 0
    share = m / total
    if plan.finetune == "freeze":
        return round(freeze_params(model, plan.freeze_layers, plan.trainable_modules) * share), 0, 0
    adapters = round(lora_params(model, plan.lora_targets, plan.lora_rank) * share)
    quantized = round(linear_weights(model) * share) if plan.finetune == "qlora" else 0
    return adapters, quantized, adapters
