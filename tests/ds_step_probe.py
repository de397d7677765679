"""Run one real DeepSpeed training step of the tiny-qwen3 preset on CPU, in this process only.

Used by tests/test_ds_engine.py, one subprocess per config, so DeepSpeed's global state (process
group, zero.Init context, HfDeepSpeedConfig weakref) never leaks between tests.

    python tests/ds_step_probe.py CONFIG.json [--model tiny-qwen3] [--seq-len 16]

The caller sets DS_ACCELERATOR=cpu, MASTER_ADDR, MASTER_PORT, RANK, LOCAL_RANK, WORLD_SIZE.
Prints one line ``DS_STEP_RESULT={json}`` with the loss, whether it is finite, the engine's
global step count and the dtype of the trained parameters; exit 0 on success.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import sys

import torch._dynamo  # noqa: F401  (must come before deepspeed: it patches torch.compile paths)
import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--model", default="tiny-qwen3")
    ap.add_argument("--seq-len", type=int, default=16)
    args = ap.parse_args()

    with open(args.config, encoding="utf-8") as fh:
        ds_config = json.load(fh)

    import deepspeed
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    from qwen_ds.models import load_model

    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)

    spec = load_model(args.model)
    hf_cfg_dict = dict(spec.config)
    model_type = hf_cfg_dict.pop("model_type")
    hf_cfg_dict.pop("architectures", None)
    hf_cfg_dict.pop("torch_dtype", None)
    hf_config = AutoConfig.for_model(model_type, **hf_cfg_dict)

    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    keep_alive = None
    zero3_init = "none"
    if stage == 3:
        # Must exist (and stay referenced) before the model is built, so that from_config runs under
        # deepspeed.zero.Init. HfDeepSpeedConfig needs the accelerate package; without it, enter
        # deepspeed.zero.Init ourselves, which is what HfDeepSpeedConfig makes transformers do.
        try:
            keep_alive = HfDeepSpeedConfig(ds_config)
            zero3_init = "HfDeepSpeedConfig"
        except (ImportError, importlib.metadata.PackageNotFoundError):
            zero3_init = "deepspeed.zero.Init"
    if zero3_init == "deepspeed.zero.Init":
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            model = AutoModelForCausalLM.from_config(hf_config)
    else:
        model = AutoModelForCausalLM.from_config(hf_config)
    model.train()

    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)

    micro = engine.train_micro_batch_size_per_gpu()
    gen = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, hf_config.vocab_size, (micro, args.seq_len), generator=gen).to(engine.device)
    out = engine(input_ids=input_ids, labels=input_ids)
    loss = out.loss
    engine.backward(loss)
    engine.step()

    param_dtype = str(next(engine.module.parameters()).dtype)
    result = {
        "loss": float(loss.detach().float().item()),
        "finite": math.isfinite(float(loss.detach().float().item())),
        "global_steps": int(engine.global_steps),
        "zero_stage": int(engine.zero_optimization_stage()),
        "bf16": bool(engine.bfloat16_enabled()),
        "fp16": bool(engine.fp16_enabled()),
        "param_dtype": param_dtype,
        "optimizer": type(optimizer).__name__,
        "zero3_init": zero3_init,
        "offload_optimizer": str(engine.zero_offload_optimizer().device) if engine.zero_offload_optimizer() else "none",
        "offload_param": str(engine.zero_offload_param().device) if engine.zero_offload_param() else "none",
    }
    print("DS_STEP_RESULT=" + json.dumps(result), flush=True)
    del keep_alive
    return 0


if __name__ == "__main__":
    sys.exit(main())
