"""The estimator's pipeline stages are the ones the runtime builds: qwen_ds.estimator.layout reproduces
DeepSpeed's parameter-balanced partition (deepspeed.runtime.utils.partition_balanced) over the layer
parameters of runtime/pipeline.py's PipelineModule (embedding, decoder layers, final norm, head)."""

import random

import pytest

pytest.importorskip("deepspeed")
torch = pytest.importorskip("torch")

from deepspeed.runtime.utils import partition_balanced  # noqa: E402

from qwen_ds.errors import InputError  # noqa: E402
from qwen_ds.estimator.layout import balanced_parts, layout, pipeline_weights  # noqa: E402
from qwen_ds.hardware import Cluster, get_gpu  # noqa: E402
from qwen_ds.knobs import Plan  # noqa: E402
from qwen_ds.models import load_model  # noqa: E402


def test_balanced_parts_is_deepspeeds_partition_on_random_weights():
    rng = random.Random(7)
    for _ in range(300):
        n, parts = rng.randint(1, 24), rng.randint(1, 9)
        weights = tuple(rng.choice([0, 1, rng.randint(1, 10), rng.randint(1, 10**6)]) for _ in range(n))
        assert balanced_parts(weights, parts) == tuple(partition_balanced(list(weights), parts)), (weights, parts)


@pytest.mark.parametrize("name", ["Qwen3-0.6B", "Qwen3-8B", "Qwen3-30B-A3B", "Qwen3-Next-80B-A3B"])
def test_balanced_parts_is_deepspeeds_partition_on_real_models(name):
    weights = pipeline_weights(load_model(name))
    for pp in (2, 3, 4, 8):
        assert balanced_parts(weights, pp) == tuple(partition_balanced(list(weights), pp)), pp


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-qwen3-moe", "tiny-qwen3-next"])
def test_pipeline_weights_are_the_parameters_of_the_runtimes_layers(name):
    """Each entry is what DeepSpeed's _count_layer_params counts for that PipelineModule layer."""
    from transformers import AutoModelForCausalLM

    from qwen_ds.runtime.common import model_config

    spec = load_model(name)
    model = AutoModelForCausalLM.from_config(model_config(None, name))

    def n(module):
        return sum(p.numel() for p in module.parameters())

    head = model.model.embed_tokens if spec.tie_embeddings else model.lm_head
    real = (n(model.model.embed_tokens), *(n(layer) for layer in model.model.layers), n(model.model.norm), n(head))
    assert pipeline_weights(spec) == real


def test_layout_takes_the_heaviest_stage_of_the_partition():
    m = load_model("Qwen3-0.6B")  # tied: the last stage holds its own copy of the 155 M embedding
    lay = layout(m, Cluster(get_gpu("H100-SXM"), 1, 4), Plan(zero_stage=1, pp=4), training=True)
    bounds = balanced_parts(pipeline_weights(m), 4)
    assert lay.stage_params[0] == sum(pipeline_weights(m)[:bounds[1]])
    assert lay.params_per_mp_rank == max(lay.stage_params)
    assert lay.layers_per_stage == len(lay.stage_layers) and lay.stage_layers.stop <= m.num_layers
    # fewer decoder layers on the stages with the embedding and the head than on the others
    per_stage = [len(range(max(a, 1) - 1, min(b, m.num_layers + 1) - 1)) for a, b in zip(bounds, bounds[1:])]
    assert sum(per_stage) == m.num_layers and per_stage[0] < per_stage[1] and per_stage[-1] < per_stage[1]


def test_tensor_and_pipeline_parallel_training_together_is_refused():
    m = load_model("tiny-qwen3")
    with pytest.raises(InputError, match="AutoTP finds no tensor-parallel policy in a PipelineModule"):
        layout(m, Cluster(get_gpu("H100-SXM"), 1, 4), Plan(zero_stage=1, tp=2, pp=2), training=True)
    layout(m, Cluster(get_gpu("H100-SXM"), 1, 4), Plan(zero_stage=1, tp=2, pp=1), training=True)


def test_plan_names_why_pinned_tp_and_pp_match_no_plan(tmp_path):
    from helpers import run_cli

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=4\n")
    rc, out, err = run_cli("plan", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hostfile), "--tp", "2",
                           "--pp", "2", "--zero", "1")
    assert rc == 2 and "AutoTP finds no tensor-parallel policy in a PipelineModule" in err and not out
