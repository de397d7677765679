"""How the model is split over the cluster: DP x TP x PP degrees and the parameters one GPU owns."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from ..hardware import Cluster
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


def layout(model: ModelSpec, cluster: Cluster, plan: Plan, training: bool = False) -> Layout:
    """Check the degrees tile the GPUs and the model; pick the pipeline stage with most parameters.
    ``training``: AutoTP's training path (deepspeed.initialize with autotp_size) splits what the HF
    tp_plan says, and refuses MoE plans; inference (init_inference) follows its own rules."""
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
    if model.num_layers % pp:
        raise InputError(f"--pp {pp} does not divide the {model.num_layers} layers of {model.name}; choose a divisor")
    counts: ParamCounts = count_params(model)
    per = model.num_layers // pp
    best = None
    for stage in range(pp):
        idx = range(stage * per, (stage + 1) * per)
        n = layers_params(model, idx) if counts.layers else counts.total * per // model.num_layers
        if stage == 0:
            n += counts.embedding
        if stage == pp - 1:
            n += counts.lm_head + counts.final_norm
        if best is None or n > best[0]:
            best = (n, stage, idx)
    n, stage, idx = best
    if not counts.layers:  # meta-counted family: whole model as one block, all but embedding and head split
        n = counts.total if pp == 1 else n
        split = max(0, n - counts.embedding - counts.lm_head - counts.final_norm)
    else:
        split = autotp_sharded_params(model, idx)
        # AutoTP training also splits the head by the vocabulary (HF tp_plan; tied: with the embedding);
        # a PipelineModule has no HF tp_plan, so only without pipeline stages
        if tp > 1 and pp == 1:
            split += autotp_head_split(model, training)
    return Layout(plan.dp(world), tp, pp, n - split + -(-split // tp), per, idx, stage == 0, stage == pp - 1,
                  n - split)
