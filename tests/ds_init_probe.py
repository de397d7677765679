"""Run real deepspeed.initialize + two training steps for each of several configs, in this process.

Used by tests/test_validate_ds_proof.py: one subprocess for all configs (importing DeepSpeed is
the slow part). The model is a torch Linear(4, 4) in fp32 on DeepSpeed's CPU accelerator, world
size 1, gloo; the input is 10s, so the gradient norm (about 40) is far above a clipping norm of 1.

    python tests/ds_init_probe.py CONFIGS.json     (a JSON list of ds_config dicts)

The caller sets DS_ACCELERATOR=cpu, MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE.
Prints one line ``DS_INIT_RESULTS=[...]``, per config: failed_at ("init", "step" or null), error,
finite (every weight finite after the steps) and update_norm (L2 norm of the weight change).
"""

from __future__ import annotations

import json
import logging
import sys

import torch

# two steps: DeepSpeed's warmup schedulers give lr = warmup_min_lr to the first step and only then
# compute an lr from warmup_max_lr (so a NaN there shows in the weights after step 2)
STEPS = 2


def run_one(deepspeed, config: dict) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
    stage = "init"
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
        stage = "step"
        for _ in range(STEPS):
            loss = engine(torch.full((1, 4), 10.0)).sum()
            engine.backward(loss)
            engine.step()
    except Exception as exc:  # what DeepSpeed raises is the point: AssertionError, TypeError, ValueError
        return {"failed_at": stage, "error": f"{type(exc).__name__}: {exc}"[:300], "finite": None, "update_norm": None}
    after = torch.cat([p.detach().flatten() for p in engine.module.parameters()])
    return {"failed_at": None, "error": None, "finite": bool(torch.isfinite(after).all()),
            "update_norm": float((after - before).norm()) if torch.isfinite(after).all() else None}


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as fh:
        configs = json.load(fh)
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    deepspeed.init_distributed(dist_backend="gloo")
    results = [run_one(deepspeed, cfg) for cfg in configs]
    print("DS_INIT_RESULTS=" + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
