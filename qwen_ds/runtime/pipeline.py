"""Pipeline parallelism for the built-in trainer: an HF Qwen3 / Qwen3-MoE / Qwen3-Next causal LM as a DeepSpeed
``PipelineModule`` (deepspeed.pipe).

Layers: embedding, one wrapper per decoder layer, final norm, and the head. Only a hidden-state tensor
travels between stages; each decoder wrapper computes its own position ids, rotary embeddings and causal
mask from it, as HF's Qwen3Model does once for all layers. With tied embeddings the embedding and the
head are one ``TiedLayerSpec`` (DeepSpeed sums their gradients across the first and the last stage). The
loss is the chunked cross-entropy of runtime/loss.py over the normed hidden state and the head weight,
so the full [tokens, vocab] logits never exist.

The whole HF model is first built by build_model (seeded random init or from_pretrained, the config's
dtype), so a pipeline run starts from exactly the weights of the data-parallel run; each stage then
keeps only its layers.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..builtin import PIPE_MODEL_TYPES
from .common import RuntimeFailure
from .loss import chunked_causal_lm_loss



def causal_masks(config, hidden: torch.Tensor, position_ids: torch.Tensor) -> dict:
    """The mask mapping HF's Qwen3Model / Qwen3NextModel builds: full attention, sliding when the config has
    sliding layers, and none for Qwen3-Next's Gated DeltaNet layers (their mask is the 2D padding mask, None
    for the unpadded batches the trainer feeds)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    kwargs = {"config": config, "inputs_embeds": hidden, "attention_mask": None, "cache": None,
              "position_ids": position_ids}
    out = {"full_attention": create_causal_mask(**kwargs)}
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        out["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
    out["linear_attention"] = None
    return out


class EmbedPipe(nn.Module):
    """input_ids -> hidden states (also the tied head: ``weight`` is the embedding matrix)."""

    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self.embed = embed

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class DecoderPipe(nn.Module):
    """One HF decoder layer; position embeddings and the causal mask computed here from the hidden state."""

    def __init__(self, layer: nn.Module, rotary: nn.Module, config, layer_type: str):
        super().__init__()
        self.layer = layer
        self.rotary = rotary  # no parameters (inv_freq is a buffer)
        self.config = config
        self.layer_type = layer_type

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        position_embeddings = self.rotary(hidden, position_ids)
        mask = causal_masks(self.config, hidden, position_ids)[self.layer_type]
        out = self.layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                         position_ids=position_ids, use_cache=False)
        return out[0] if isinstance(out, tuple) else out


class NormPipe(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)


class HeadPipe(nn.Module):
    """The untied lm_head; passes the hidden state on (the loss applies the head chunk by chunk)."""

    def __init__(self, lm_head: nn.Linear):
        super().__init__()
        self.lm_head = lm_head

    @property
    def weight(self) -> torch.Tensor:
        return self.lm_head.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def _tied_head_forward(module: EmbedPipe, hidden: torch.Tensor) -> torch.Tensor:
    return hidden  # the loss reads module.weight


class ChunkedHeadLoss:
    """PipelineModule loss_fn(hidden, labels): chunked causal-LM cross-entropy with the head weight of
    the last stage (set once the PipelineModule is built; only the last stage calls it)."""

    def __init__(self, chunk: int = 1024):
        self.head: nn.Module | None = None
        self.chunk = chunk

    def __call__(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise RuntimeError("pipeline loss called on a stage without the head")
        proj = functools.partial(F.linear, weight=self.head.weight)
        return chunked_causal_lm_loss(hidden, proj, labels, self.chunk)


def build_pipeline_module(model, num_stages: int, activation_checkpoint_interval: int = 0,
                          partition_method: str = "parameters"):
    """The HF causal LM ``model`` (from build_model) as a deepspeed.pipe.PipelineModule of num_stages."""
    from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec

    config = model.config
    if config.model_type not in PIPE_MODEL_TYPES:
        raise RuntimeFailure(f"pipeline parallelism (pp {num_stages}) supports model types "
                             f"{', '.join(PIPE_MODEL_TYPES)}, not {config.model_type}; "
                             "regenerate the config with gen-config --pp 1")
    n_layers = config.num_hidden_layers
    if n_layers + 2 < num_stages:
        raise RuntimeFailure(f"pp {num_stages} exceeds the model's {n_layers} layers + embedding + head; "
                             "lower gen-config --pp")
    base = model.model
    tied = bool(getattr(config, "tie_word_embeddings", False))
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * n_layers)
    specs: list[Any] = []
    if tied:
        specs.append(TiedLayerSpec("embed", EmbedPipe, base.embed_tokens, tied_weight_attr=["weight"]))
    else:
        specs.append(LayerSpec(EmbedPipe, base.embed_tokens))
    for i, layer in enumerate(base.layers[:n_layers]):
        specs.append(LayerSpec(DecoderPipe, layer, base.rotary_emb, config, layer_types[i]))
    specs.append(LayerSpec(NormPipe, base.norm))
    if tied:
        specs.append(TiedLayerSpec("embed", EmbedPipe, base.embed_tokens, forward_fn=_tied_head_forward,
                                   tied_weight_attr=["weight"]))
    else:
        specs.append(LayerSpec(HeadPipe, model.lm_head))
    loss_fn = ChunkedHeadLoss()
    pipe = PipelineModule(layers=specs, num_stages=num_stages, loss_fn=loss_fn, partition_method=partition_method,
                          activation_checkpoint_interval=activation_checkpoint_interval,
                          checkpointable_layers=["DecoderPipe"])
    if pipe.stage_id == num_stages - 1:
        loss_fn.head = pipe.tied_modules["embed"] if tied else pipe.forward_funcs[-1]
    counts = pipe._count_layer_params()  # what partition_method "parameters" balanced
    pipe.stage_param_counts = [int(sum(counts[pipe.parts[s]:pipe.parts[s + 1]])) for s in range(num_stages)]
    # the layer specs hold the whole HF model; keep only this stage's layers alive
    for i, spec in enumerate(pipe._layer_specs):
        if not pipe._local_start <= i < pipe._local_stop and isinstance(spec, LayerSpec):
            spec.module_args = ()
    return pipe


def hf_name(pipe_name: str, num_layers: int) -> str:
    """The HF causal LM's name of a PipelineModule parameter (layer i of the specs: 0 embedding, 1..L decoder
    layers, L + 1 final norm, L + 2 head; a tied embedding is ``tied_modules.embed``)."""
    if pipe_name.startswith("tied_modules.embed."):
        return "model.embed_tokens.weight"
    index, _, rest = pipe_name.partition(".")
    i = int(index)
    tail = rest.partition(".")[2]  # past the wrapper's attribute (embed, layer, norm, lm_head)
    if i == 0:
        return f"model.embed_tokens.{tail}"
    if i <= num_layers:
        return f"model.layers.{i - 1}.{tail}"
    return f"model.norm.{tail}" if i == num_layers + 1 else f"lm_head.{tail}"


def save_hf_shards(engine, out: str, hf_config) -> int:
    """16-bit HF weights of a pipeline run, one safetensors shard per stage (written by the stage's
    data-parallel rank 0) and the model.safetensors.index.json that from_pretrained reads; the tied
    embedding is written once, by the first stage. Returns the parameters written (all stages)."""
    import json
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    pipe, grid = engine.module, engine.grid
    stage, stages = grid.get_stage_id(), grid.get_pipe_parallel_world_size()
    writer = grid.get_data_parallel_rank() == 0
    tensors = {}
    for name, param in pipe.named_parameters():
        if not (name.startswith("tied_modules.") and stage != 0):  # the last stage's copy of a tied embedding
            tensors[hf_name(name, hf_config.num_hidden_layers)] = param.detach().to("cpu").contiguous()
    shard = f"model-{stage + 1:05d}-of-{stages:05d}.safetensors"
    if writer:
        os.makedirs(out, exist_ok=True)
        save_file(tensors, os.path.join(out, shard), metadata={"format": "pt"})
    mine = [(shard, {k: (t.numel(), t.numel() * t.element_size()) for k, t in tensors.items()})] if writer else []
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    weight_map, size, count = {}, 0, 0
    for part in gathered:
        for file, names in part:
            for k, (numel, nbytes) in names.items():
                weight_map[k] = file
                size, count = size + nbytes, count + numel
    if dist.get_rank() == 0:
        with open(os.path.join(out, "model.safetensors.index.json"), "w", encoding="utf-8") as fh:
            json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, fh, indent=1)
    return count


def pipeline_batches(make_batch, grad_accum: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input_ids, labels) for each of one step's micro-batches; labels are the ids (the loss shifts)."""
    for k in range(grad_accum):
        ids = make_batch(k)
        yield ids, ids.clone()


class StageProbe:
    """What this rank's pipeline stage does in a step, measured by wrapping DeepSpeed's pipeline instructions on
    this engine only (the instance's instruction table shadows the class's):
    - ``seconds``: time waiting in receives (activations from the previous stage, gradients from the next), timed
      with a device sync around each wait while ``timing``: the stage's share of the bubble;
    - ``in_flight``: the most micro-batches whose forward ran and backward did not yet (1F1B: p - s on stage s),
      i.e. how many micro-batches' activations the stage holds at once; counted always (no sync)."""

    def __init__(self, engine):
        from deepspeed.runtime.pipe import schedule

        self.timing = False
        self.seconds = 0.0
        self.live = self.in_flight = 0
        table = dict(type(engine)._INSTRUCTION_MAP)
        for instruction in (schedule.RecvActivation, schedule.RecvGrad):
            table[instruction] = self._timed(table[instruction])
        table[schedule.ForwardPass] = self._counted(table[schedule.ForwardPass], +1)
        table[schedule.BackwardPass] = self._counted(table[schedule.BackwardPass], -1)
        engine._INSTRUCTION_MAP = table

    def _counted(self, fn, step: int):
        def run(engine, *args, **kwargs):
            self.live += step
            self.in_flight = max(self.in_flight, self.live)
            return fn(engine, *args, **kwargs)

        return run

    def _timed(self, fn):
        import time

        def run(engine, *args, **kwargs):
            if not self.timing:
                return fn(engine, *args, **kwargs)
            sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
            sync()
            t0 = time.perf_counter()
            out = fn(engine, *args, **kwargs)
            sync()
            self.seconds += time.perf_counter() - t0
            return out

        return run

    def per_stage(self, engine) -> tuple[list[float], list[int]]:
        """(mean idle seconds, most micro-batches in flight) of each stage over its data-parallel ranks since the
        last call (collective)."""
        import torch.distributed as dist

        every: list = [None] * dist.get_world_size()
        dist.all_gather_object(every, (engine.grid.get_stage_id(), self.seconds, self.in_flight))
        self.seconds, self.in_flight = 0.0, 0
        stages = range(engine.grid.get_pipe_parallel_world_size())
        idle = [round(sum(s for st, s, _ in every if st == k) / max(1, sum(st == k for st, _, _ in every)), 6)
                for k in stages]
        return idle, [max(n for st, _, n in every if st == k) for k in stages]
