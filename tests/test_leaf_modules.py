"""ZeRO-3 leaf modules: gen-config writes zero_optimization.leaf_module for MoE models, DeepSpeed's own
engine flags the MoE blocks from it, and rule_leaf_modules warns when a config leaves them out.

The engine test builds plain transformers models (no qwen-ds runtime code) from the tiny presets'
config.json under HfDeepSpeedConfig and runs deepspeed.initialize with the config gen-config wrote, on
DeepSpeed's CPU accelerator, world size 1, gloo, in one subprocess (this file run as a script:
``python tests/test_leaf_modules.py CASES.json``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()


# ---------------------------------------------------------------- the probe (runs in the subprocess)

def _probe(cases_path: str) -> int:
    import torch._dynamo  # noqa: F401  (before deepspeed: it patches torch.compile paths)
    import torch
    import deepspeed
    from deepspeed.utils import z3_leaf_module
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend="gloo")
    results = []
    for case in json.loads(Path(cases_path).read_text()):
        ds_config = case["ds_config"]
        hf = dict(case["hf_config"])
        model_type = hf.pop("model_type")
        for key in ("architectures", "torch_dtype", "dtype"):
            hf.pop(key, None)
        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841  alive while the model is built: zero.Init partitions it
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **hf))
        model.train()
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
        blocks = [(name, type(m).__name__, z3_leaf_module(m)) for name, m in engine.module.named_modules()
                  if type(m).__name__.endswith("SparseMoeBlock")]
        leaves = sorted({type(m).__name__ for m in engine.module.modules() if z3_leaf_module(m)})
        loss = None
        if case.get("step"):
            ids = torch.randint(0, hf["vocab_size"], (1, 16), generator=torch.Generator().manual_seed(1))
            out = engine(input_ids=ids, labels=ids)
            engine.backward(out.loss)
            engine.step()
            loss = float(out.loss)
        results.append({"label": case["label"], "blocks": blocks, "leaf_classes": leaves, "loss": loss,
                        "zero_stage": engine.zero_optimization_stage()})
        engine.destroy()
        del engine, model, keep
    print("LEAF_RESULTS=" + json.dumps(results), flush=True)
    return 0


# ---------------------------------------------------------------- helpers

def _gen_config(tmp_path: Path, model: str, zero: int, mode: str = "train", *extra: str) -> dict:
    from helpers import run_cli

    hf = tmp_path / "hostfile"
    hf.write_text("localhost slots=1\n")
    out = tmp_path / f"{model}-{mode}-z{zero}"
    rc, _, err = run_cli("gen-config", "-m", model, "-g", "H100-SXM", "--hostfile", str(hf), "--mode", mode,
                         "--zero", str(zero), "--micro-batch", "1", "--grad-accum", "1", "--seq-len", "16",
                         "--tp", "1", "--pp", "1", "-o", str(out), *extra)
    assert rc == 0, err
    return json.loads((out / "ds_config.json").read_text())


def _ctx(model: str):
    from qwen_ds.models import load_model
    from qwen_ds.validate.problems import Context

    return Context(world_size=1, gpus_per_node=1, model=load_model(model))


# ---------------------------------------------------------------- the class names

def test_leaf_class_names_exist_in_installed_transformers():
    pytest.importorskip("transformers")
    import importlib

    from qwen_ds.sharding import MOE_BLOCK_CLASSES

    for family, name in MOE_BLOCK_CLASSES.items():
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        cls = getattr(mod, name, None)
        assert cls is not None, f"{family}: transformers has no {name}"
        # DeepSpeed matches a string entry by __name__ or module.qualname
        assert f"{cls.__module__}.{cls.__qualname__}" == f"transformers.models.{family}.modeling_{family}.{name}"


def test_zero3_leaf_classes_per_model():
    from qwen_ds.models import load_model
    from qwen_ds.models.spec import spec_from_config
    from qwen_ds.sharding import zero3_leaf_classes

    assert zero3_leaf_classes(load_model("Qwen3-30B-A3B")) == ("Qwen3MoeSparseMoeBlock",)
    assert zero3_leaf_classes(load_model("Qwen3-Next-80B-A3B")) == ("Qwen3NextSparseMoeBlock",)
    for dense in ("tiny-qwen3", "Qwen3-8B", "Llama-3.1-8B", "Qwen2.5-7B"):
        assert zero3_leaf_classes(load_model(dense)) == ()
    moe = dict(load_model("tiny-qwen3-moe").config)
    assert zero3_leaf_classes(spec_from_config(dict(moe, mlp_only_layers=[0, 1]), name="x")) == ()  # every layer dense
    mixtral = {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
               "vocab_size": 128, "intermediate_size": 128, "num_local_experts": 4}
    assert zero3_leaf_classes(spec_from_config(mixtral, name="m")) == ("MixtralSparseMoeBlock",)
    assert zero3_leaf_classes(spec_from_config(dict(mixtral, num_local_experts=0), name="m")) == ()


# ---------------------------------------------------------------- gen-config

@pytest.mark.parametrize("model,cls", [("tiny-qwen3-moe", "Qwen3MoeSparseMoeBlock"),
                                       ("tiny-qwen3-next", "Qwen3NextSparseMoeBlock")])
def test_gen_config_writes_leaf_module_for_moe_zero3(tmp_path, model, cls):
    from qwen_ds.validate import validate_config

    cfg = _gen_config(tmp_path, model, 3)
    assert cfg["zero_optimization"]["leaf_module"] == {"classes": [cls]}
    assert [p for p in validate_config(cfg, _ctx(model)) if p.severity == "error"] == []
    # ZeRO-Inference goes through deepspeed.initialize too
    infer = _gen_config(tmp_path, model, 3, "infer", "--offload-param", "cpu")
    assert infer["zero_optimization"]["leaf_module"] == {"classes": [cls]}


def test_gen_config_no_leaf_module_for_dense_or_below_stage3(tmp_path):
    assert "leaf_module" not in _gen_config(tmp_path, "tiny-qwen3", 3)["zero_optimization"]
    for zero in (1, 2):
        assert "leaf_module" not in _gen_config(tmp_path, "tiny-qwen3-moe", zero)["zero_optimization"]


def test_written_config_passes_deepspeed_parser(tmp_path):
    pytest.importorskip("deepspeed")
    cfg = _gen_config(tmp_path, "tiny-qwen3-next", 3)
    path = tmp_path / "next.json"
    path.write_text(json.dumps(cfg))
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    proc = subprocess.run([sys.executable, "-m", "qwen_ds.cli", "validate", str(path), "--deepspeed", "--model",
                           "tiny-qwen3-next", "--nodes", "1", "--gpus-per-node", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DeepSpeed 0.19.8 parser" in proc.stdout


# ---------------------------------------------------------------- the rule

def test_rule_silent_on_gen_config_output(tmp_path):
    from qwen_ds.validate.leaf_rules import rule_leaf_modules

    for model in ("tiny-qwen3-moe", "tiny-qwen3-next"):
        assert rule_leaf_modules(_gen_config(tmp_path, model, 3), _ctx(model)) == []


def test_rule_warns_qwen3_next_without_leaf_module(tmp_path):
    from qwen_ds.validate.leaf_rules import rule_leaf_modules

    cfg = _gen_config(tmp_path, "tiny-qwen3-next", 3)
    del cfg["zero_optimization"]["leaf_module"]
    (p,) = rule_leaf_modules(cfg, _ctx("tiny-qwen3-next"))
    assert (p.path, p.rule, p.severity) == ("$.zero_optimization.leaf_module", "leaf_modules", "warning")
    assert "\n" not in p.message
    assert p.message.endswith('"leaf_module": {"classes": ["Qwen3NextSparseMoeBlock"]}')
    # the JSON it names, added, silences it
    fix = json.loads("{" + p.message.rsplit("set in zero_optimization: ", 1)[1] + "}")
    cfg["zero_optimization"].update(fix)
    assert rule_leaf_modules(cfg, _ctx("tiny-qwen3-next")) == []


def test_rule_warns_when_classes_replace_the_default(tmp_path):
    from qwen_ds.validate.leaf_rules import rule_leaf_modules

    cfg = _gen_config(tmp_path, "tiny-qwen3-moe", 3)
    cfg["zero_optimization"]["leaf_module"] = {"classes": "MyBlock"}  # DeepSpeed wraps a string into a list
    (p,) = rule_leaf_modules(cfg, _ctx("tiny-qwen3-moe"))
    assert p.message.endswith('"leaf_module": {"classes": ["MyBlock", "Qwen3MoeSparseMoeBlock"]}')
    # the fully qualified name counts, as in DeepSpeed's matcher
    fq = "transformers.models.qwen3_moe.modeling_qwen3_moe.Qwen3MoeSparseMoeBlock"
    cfg["zero_optimization"]["leaf_module"] = {"classes": [fq]}
    assert rule_leaf_modules(cfg, _ctx("tiny-qwen3-moe")) == []
    # a wrong module path does not
    cfg["zero_optimization"]["leaf_module"] = {"classes": ["transformers.models.x.Qwen3MoeSparseMoeBlock"]}
    assert len(rule_leaf_modules(cfg, _ctx("tiny-qwen3-moe"))) == 1
    # every MoE block named by suffix or path: covered
    cfg["zero_optimization"]["leaf_module"] = {"classes": [], "name_suffixes": ["mlp"]}
    assert rule_leaf_modules(cfg, _ctx("tiny-qwen3-moe")) == []
    cfg["zero_optimization"]["leaf_module"] = {"classes": [], "names": ["model.layers.0.mlp"]}  # layer 1 left out
    assert len(rule_leaf_modules(cfg, _ctx("tiny-qwen3-moe"))) == 1


def test_rule_silent_where_it_does_not_apply(tmp_path):
    from qwen_ds.validate.leaf_rules import rule_leaf_modules
    from qwen_ds.validate.problems import Context

    moe3 = _gen_config(tmp_path, "tiny-qwen3-moe", 3)
    del moe3["zero_optimization"]["leaf_module"]
    # DeepSpeed 0.19.8's default classes already hold Qwen3MoeSparseMoeBlock (proved in the engine test)
    assert rule_leaf_modules(moe3, _ctx("tiny-qwen3-moe")) == []
    nxt = _gen_config(tmp_path, "tiny-qwen3-next", 3)
    del nxt["zero_optimization"]["leaf_module"]
    assert rule_leaf_modules(nxt, Context()) == []  # model unknown
    assert rule_leaf_modules(nxt, _ctx("tiny-qwen3")) == []  # dense model
    assert rule_leaf_modules(_gen_config(tmp_path, "tiny-qwen3-next", 2), _ctx("tiny-qwen3-next")) == []


# ---------------------------------------------------------------- the real engine

@pytest.mark.slow
def test_deepspeed_engine_flags_moe_blocks_from_written_config(tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    from qwen_ds.launch.ports import free_port
    from qwen_ds.launch.run import clear_shm_buffers
    from qwen_ds.models import load_model

    def case(label, model, cfg, step=False):
        return {"label": label, "hf_config": dict(load_model(model).config), "ds_config": cfg, "step": step}

    moe = _gen_config(tmp_path, "tiny-qwen3-moe", 3)
    nxt = _gen_config(tmp_path, "tiny-qwen3-next", 3)
    nxt_without = json.loads(json.dumps(nxt))
    del nxt_without["zero_optimization"]["leaf_module"]
    moe_without = json.loads(json.dumps(moe))
    del moe_without["zero_optimization"]["leaf_module"]
    dense = _gen_config(tmp_path, "tiny-qwen3", 3)
    cases = [case("moe", "tiny-qwen3-moe", moe, step=True), case("next", "tiny-qwen3-next", nxt),
             case("next-without", "tiny-qwen3-next", nxt_without), case("moe-without", "tiny-qwen3-moe", moe_without),
             case("dense", "tiny-qwen3", dense)]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", LOCAL_SIZE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        proc = subprocess.run([sys.executable, str(HERE), str(path)], capture_output=True, text=True, timeout=540,
                              cwd=REPO, env=env)
    finally:
        clear_shm_buffers("127.0.0.1", port)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LEAF_RESULTS=")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    r = {x["label"]: x for x in json.loads(lines[-1].split("=", 1)[1])}
    assert all(x["zero_stage"] == 3 for x in r.values())
    # with the written config every MoE block (one per layer of the tiny presets) is a z3 leaf, nothing else is
    assert [(n, c) for n, c, _ in r["moe"]["blocks"]] == [(f"model.layers.{i}.mlp", "Qwen3MoeSparseMoeBlock")
                                                           for i in range(2)]
    assert all(leaf for _, _, leaf in r["moe"]["blocks"]) and r["moe"]["leaf_classes"] == ["Qwen3MoeSparseMoeBlock"]
    assert r["moe"]["loss"] is not None and r["moe"]["loss"] > 0  # a ZeRO-3 step runs with the leaves
    assert len(r["next"]["blocks"]) == 4 and all(leaf for _, _, leaf in r["next"]["blocks"])
    assert r["next"]["leaf_classes"] == ["Qwen3NextSparseMoeBlock"]
    # without the key DeepSpeed's default classes miss Qwen3-Next (what rule_leaf_modules warns about) ...
    assert len(r["next-without"]["blocks"]) == 4 and not any(leaf for _, _, leaf in r["next-without"]["blocks"])
    # ... but hold Qwen3-MoE (why the rule is silent there)
    assert all(leaf for _, _, leaf in r["moe-without"]["blocks"]) and len(r["moe-without"]["blocks"]) == 2
    assert r["dense"]["blocks"] == [] and r["dense"]["leaf_classes"] == []


if __name__ == "__main__":
    sys.exit(_probe(sys.argv[1]))
