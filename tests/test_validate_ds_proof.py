"""Each optimizer / scheduler / number rule is real: its fixture (tests/fixtures/bad_*.json) is flagged
by validate, and real deepspeed.initialize on CPU refuses it (or, where DeepSpeed accepts it, trains
wrongly: NaN weights, no clipping); the fixed file passes validate and trains cleanly.

The DeepSpeed side runs every config in one subprocess (tests/ds_init_probe.py), so DeepSpeed is
imported once. The first run on a machine also JIT-builds DeepSpeed's CPU FusedAdam (about a minute).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from qwen_ds.validate import Context, validate_config
from qwen_ds.validate.parse import read_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROBE = Path(__file__).resolve().parent / "ds_init_probe.py"
REPO = Path(__file__).resolve().parent.parent
DELETE = object()
CTX = Context(world_size=1, gpus_per_node=1)


class Case(NamedTuple):
    fixture: str
    rule: str  # Problem.rule
    path: str  # Problem.path
    substring: str
    fix: dict  # dotted key -> value (DELETE removes it): the near-miss DeepSpeed runs cleanly
    deepspeed: str  # what DeepSpeed does with the bad file: "init" / "step" (raises there), "nan", "unclipped"
    ds_error: str = ""  # substring of DeepSpeed's exception


CASES = [
    Case("bad_optimizer_type.json", "optimizer_type", "$.optimizer.type", "did you mean 'AdamW'?",
         {"optimizer.type": "AdamW"}, "init", "not a supported DeepSpeed Optimizer"),
    Case("bad_optimizer_param.json", "optimizer_params", "$.optimizer.params.weight_decy", "did you mean 'weight_decay'?",
         {"optimizer.params.weight_decy": DELETE, "optimizer.params.weight_decay": 0.1}, "init",
         "unexpected keyword argument 'weight_decy'"),
    Case("bad_scheduler_type.json", "scheduler_type", "$.scheduler.type", "did you mean 'WarmupDecayLR'?",
         {"scheduler.type": "WarmupDecayLR"}, "init", "does not recognize LR scheduler"),
    Case("bad_scheduler_param.json", "scheduler_params", "$.scheduler.params.warmup_num_step", "did you mean 'warmup_num_steps'?",
         {"scheduler.params.warmup_num_step": DELETE, "scheduler.params.warmup_num_steps": 10}, "init",
         "unexpected keyword argument 'warmup_num_step'"),
    Case("bad_scheduler_warmup.json", "scheduler_params", "$.scheduler.params.warmup_num_steps", "must be an integer >= 1",
         {"scheduler.params.warmup_num_steps": 1}, "init", "warmup_num_steps must be a positive integer"),
    Case("bad_betas.json", "betas", "$.optimizer.params.betas", "must be two numbers in [0, 1)",
         {"optimizer.params.betas": [0.9, 0.95]}, "step", "not enough values to unpack"),
    Case("bad_non_finite.json", "non_finite", "$.optimizer.params.lr", "NaN is not a number",
         {"optimizer.params.lr": 0.001, "scheduler.params.warmup_max_lr": 0.001}, "nan"),
    Case("bad_gradient_clipping.json", "gradient_clipping", "$.gradient_clipping", "silently turns clipping off",
         {"gradient_clipping": 1.0}, "unclipped"),
]


def fixed(config: dict[str, Any], fix: dict) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for dotted, value in fix.items():
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return out


def errors(config: dict[str, Any]) -> list:
    return [p for p in validate_config(config, CTX) if p.severity == "error"]


@pytest.mark.parametrize("case", CASES, ids=[c.fixture for c in CASES])
def test_fixture_flagged_and_its_fix_clean(case: Case):
    config = read_config(FIXTURES / case.fixture)
    found = errors(config)
    assert any(p.rule == case.rule and p.path == case.path and case.substring in p.message for p in found), found
    assert errors(fixed(config, case.fix)) == []


def test_every_new_rule_has_a_fixture():
    assert {c.rule for c in CASES} == {"optimizer_type", "optimizer_params", "scheduler_type", "scheduler_params", "betas",
                                       "non_finite", "gradient_clipping"}


def _run_deepspeed(configs: list[dict], tmp_path: Path) -> list[dict]:
    from qwen_ds.launch.ports import free_port
    from qwen_ds.launch.run import clear_shm_buffers

    path = tmp_path / "configs.json"
    path.write_text(json.dumps(configs))
    port = str(free_port())
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK="0", LOCAL_RANK="0",
               WORLD_SIZE="1", LOCAL_SIZE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        proc = subprocess.run([sys.executable, str(PROBE), str(path)], capture_output=True, text=True, timeout=900,
                              cwd=REPO, env=env)
    finally:
        clear_shm_buffers("127.0.0.1", port)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("DS_INIT_RESULTS=")]
    assert proc.returncode == 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1].split("=", 1)[1])


@pytest.mark.slow
def test_deepspeed_refuses_what_validate_flags(tmp_path):
    pytest.importorskip("deepspeed")
    bad = [read_config(FIXTURES / c.fixture) for c in CASES]
    good = [fixed(cfg, c.fix) for cfg, c in zip(bad, CASES)]
    # validate's verdict first: each bad file is flagged by its rule, each fix is clean
    for case, cfg, ok in zip(CASES, bad, good):
        assert case.rule in {p.rule for p in errors(cfg)}, case.fixture
        assert errors(ok) == [], case.fixture
    results = _run_deepspeed(bad + good, tmp_path)
    for case, r_bad, r_good in zip(CASES, results[:len(CASES)], results[len(CASES):]):
        assert r_good["failed_at"] is None and r_good["finite"] is True, (case.fixture, r_good)
        if case.deepspeed in ("init", "step"):
            assert r_bad["failed_at"] == case.deepspeed and case.ds_error in r_bad["error"], (case.fixture, r_bad)
        elif case.deepspeed == "nan":  # accepted by DeepSpeed; the weights are NaN after two steps
            assert r_bad["failed_at"] is None and r_bad["finite"] is False, (case.fixture, r_bad)
        else:  # "unclipped": accepted; SGD lr 1 moves the weights by the whole gradients (norm ~40 each), not <= 1 each
            assert r_good["update_norm"] <= 2.0 + 1e-4, (case.fixture, r_good)  # two clipped steps
            assert r_bad["failed_at"] is None and r_bad["update_norm"] > 10, (case.fixture, r_bad)
