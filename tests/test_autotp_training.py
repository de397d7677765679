"""DeepSpeed 0.19.8's AutoTP *training* path (``"tensor_parallel": {"autotp_size": 2}``, applied in
deepspeed.initialize) against qwen_ds.sharding, through the real launcher on CPU (gloo, 2 ranks):
tests/autotp_train_probe.py reports per rank what each parameter holds and one training step's loss."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("deepspeed")
pytest.importorskip("transformers")

from qwen_ds import api  # noqa: E402
from qwen_ds.errors import InputError  # noqa: E402
from qwen_ds.estimator.layout import layout  # noqa: E402
from qwen_ds.models import load_model  # noqa: E402
from qwen_ds.models.counts import count_params, layer_tensors  # noqa: E402
from qwen_ds.sharding import (  # noqa: E402
    AUTOTP_TRAIN_REFUSED, MOE_BLOCK_CLASSES, autotp_head_split, autotp_sharded_params, autotp_shards,
    autotp_unsupported)

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "autotp_train_probe.py"
ZERO = 1
pytestmark = [pytest.mark.slow, pytest.mark.runtime]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(tmp_path, model, overrides=None, *extra):
    """(exit status, [rank0.json, rank1.json], launcher output) of the probe under the DeepSpeed launcher."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    out = tmp_path / "out"
    from qwen_ds.launch.run import clear_shm_buffers

    port = str(free_port())
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--no_ssh_check",
           "--master_addr", "127.0.0.1", "--master_port", port, str(PROBE), "--model", model,
           "--out", str(out), "--zero", str(ZERO), "--set", json.dumps(overrides or {}), *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                           env={**os.environ, "DS_ACCELERATOR": "cpu"})
    finally:  # DeepSpeed's CPU all-reduce leaves 69 MB a rank in /dev/shm (see qwen_ds/launch/run.py)
        clear_shm_buffers("127.0.0.1", port)
    ranks = [json.loads(f.read_text()) for f in sorted(out.glob("rank*.json"))]
    return p.returncode, ranks, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.fixture(scope="module")
def dense_probe(tmp_path_factory):
    """probe() of a DENSE case, run once for the tests that read it."""
    done = {}

    def run(base, overrides):
        key = (base, json.dumps(overrides))
        if key not in done:
            done[key] = probe(tmp_path_factory.mktemp("probe"), base, overrides)
        return done[key]

    return run


def spec_of(tmp_path, base, overrides):
    """The qwen-ds ModelSpec of the config the probe built (a preset, or a preset with overrides as a file)."""
    if not overrides:
        return load_model(base)
    path = tmp_path / f"{base}-train-autotp.json"
    path.write_text(json.dumps({**dict(load_model(base).config), **overrides}))
    return load_model(str(path))


def expected_split(spec) -> set[str]:
    """Module paths sharding says AutoTP training splits: the projections of autotp_shards, and the
    vocab-split head of autotp_head_split (tied: the embedding is that same tensor)."""
    names = {f"model.layers.{i}.{module}" for i in range(spec.num_layers) for module, _ in layer_tensors(spec, i)
             if autotp_shards(module)}
    if autotp_head_split(spec, training=True):
        names |= {"lm_head", "model.embed_tokens"} if spec.tie_embeddings else {"lm_head"}
    return names


DENSE = [("tiny-qwen3", None), ("tiny-qwen3", {"tie_word_embeddings": False})]
DENSE_IDS = ["tied", "untied"]


@pytest.mark.parametrize("base,overrides", DENSE, ids=DENSE_IDS)
def test_autotp_training_splits_what_sharding_says(base, overrides, tmp_path, dense_probe):
    rc, ranks, log = dense_probe(base, overrides)
    assert rc == 0 and len(ranks) == 2, log
    spec = spec_of(tmp_path, base, overrides)
    r0, r1 = ranks
    # (b) the split tensors are the ones sharding counts, each halved, on both ranks
    for r in ranks:
        split = {name.rsplit(".", 1)[0] for name, (local, full) in r["params"].items() if local < full}
        assert split == expected_split(spec)
        assert all(local * 2 == full for local, full in r["params"].values() if local < full)
    split_elems = autotp_sharded_params(spec) + autotp_head_split(spec, training=True)
    assert split_elems == sum(full for name, (local, full) in r0["params"].items()
                              if local < full and not (spec.tie_embeddings and name == "lm_head.weight"))
    # per-rank totals: what sharding keeps whole plus half of what it splits
    total = count_params(spec).total
    assert r0["full_total"] == total
    assert r0["local_total"] == r1["local_total"] == total - split_elems + split_elems // 2
    # one step on identical data: the same finite loss on both TP ranks, lower after the step
    assert r0["finite"] and r1["finite"]
    assert r0["loss"] == pytest.approx(r1["loss"], rel=1e-6) and r0["loss_after"] < r0["loss"]
    assert r0["replaced"]["lm_head"][1] == ("VocabParallelLinear" if spec.tie_embeddings else "LinearLayer")
    # tied: the head's own output stays vocab-sharded (DeepSpeed computes the HF loss vocab-parallel), so a
    # loss that calls lm_head itself sees vocab / 2 logits; untied: gathered to the full vocab
    assert r0["head_out"] == (spec.vocab_size // 2 if spec.tie_embeddings else spec.vocab_size)
    if spec.tie_embeddings:
        assert r0["replaced"]["model.embed_tokens"] == ["Embedding", "VocabParallelEmbedding"]
    else:
        assert "model.embed_tokens" not in r0["replaced"]


def test_autotp_training_refuses_different_data_within_a_tp_group(tmp_path):
    """TP ranks must be fed the same batch: DeepSpeed's first-forward hook (engine.py,
    check_dataloader_inputs_same_across_ranks) broadcasts the TP group's rank-0 inputs and asserts."""
    rc, ranks, log = probe(tmp_path, "tiny-qwen3", None, "--rank-data")
    assert rc == 4 and ranks, log
    assert any("Data inconsistency within the TP group" in r["error"] for r in ranks)


@pytest.mark.parametrize("base", ["tiny-qwen3-moe", "tiny-qwen3-next"])
def test_autotp_training_refuses_moe_families(base, tmp_path):
    """DeepSpeed rejects the whole HF tp_plan of a fused-experts family; sharding says so for training."""
    rc, ranks, log = probe(tmp_path, base)
    assert rc == 3 and ranks, log
    assert all("unsupported partition style" in r["error"] and "packed_colwise" in r["error"] for r in ranks)
    assert "packed_colwise" in autotp_unsupported(load_model(base), training=True)


def test_refused_families_are_those_deepspeed_rejects():
    """AUTOTP_TRAIN_REFUSED is exactly the families (of those qwen-ds knows) whose installed transformers
    tp_plan has a style DeepSpeed's TPPlanConverter does not support."""
    from deepspeed.module_inject.tp_plan_converter import SUPPORTED_STYLES
    from transformers import AutoConfig

    families = {"qwen3", "qwen2", "llama", *MOE_BLOCK_CLASSES}
    rejected = {mt for mt in families
                if set((AutoConfig.for_model(mt).base_model_tp_plan or {}).values()) - SUPPORTED_STYLES}
    assert rejected == set(AUTOTP_TRAIN_REFUSED)


@pytest.mark.parametrize("base,overrides", [*DENSE, ("tiny-qwen3-moe", None)], ids=[*DENSE_IDS, "moe"])
def test_estimator_params_per_mp_rank_is_what_autotp_training_holds(base, overrides, tmp_path, dense_probe):
    """(a) layout's params_per_mp_rank for a TP 2 training plan equals the probe's per-rank count (the
    measured numbers: tied 76,160, untied 141,696), and an MoE family is refused."""
    spec = spec_of(tmp_path, base, overrides)
    if spec.family in AUTOTP_TRAIN_REFUSED:
        inp = api.inputs(spec, "H100-SXM", nodes=1, gpus_per_node=2, tp=2, zero_stage=ZERO)
        with pytest.raises(InputError):
            layout(inp.model, inp.cluster, inp.plan, training=True)
        return
    rc, ranks, log = dense_probe(base, overrides)
    assert rc == 0, log
    inp = api.inputs(spec, "H100-SXM", nodes=1, gpus_per_node=2, tp=2, zero_stage=ZERO)
    assert layout(inp.model, inp.cluster, inp.plan, training=True).params_per_mp_rank == ranks[0]["local_total"]
    # and the planner's own path (estimate of a training plan) lays it out the same way
    assert api.estimate(spec, "H100-SXM", nodes=1, gpus_per_node=2, tp=2, zero_stage=ZERO).layout.params_per_mp_rank \
        == ranks[0]["local_total"]
