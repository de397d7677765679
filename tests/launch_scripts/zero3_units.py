"""What DeepSpeed ZeRO-3 really does with a model built by the runtime (CPU, gloo): the elements it
keeps persistent (ds_persist) and the all-gather message sizes of a training step. Rank 0 prints
``UNITS {"persist": N, "gather_sizes": [bytes per rank, largest first], "elem": bytes per element}``."""

import argparse
import json
import os
import sys

import torch
import torch._dynamo  # noqa: F401  (before zero.Init)

import deepspeed
import deepspeed.comm as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from qwen_ds.runtime.common import build_model, model_config  # noqa: E402
from qwen_ds.runtime.loss import causal_lm_loss  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--local_rank", type=int, default=0)
ap.add_argument("--config", required=True)
ap.add_argument("--model", required=True)
args = ap.parse_args()
deepspeed.init_distributed(dist_backend="gloo")
with open(args.config) as fh:
    ds_config = json.load(fh)
ds_config["comms_logger"] = {"enabled": True, "prof_all": True, "verbose": False, "debug": False}
model, keep = build_model(model_config(None, args.model), ds_config, None, 0, for_training=True)
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
persist = sum(p.ds_numel for p in engine.module.parameters() if getattr(p, "ds_persist", False))
ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
for _ in range(3):
    dist.comms_logger.comms_dict.clear()
    loss = causal_lm_loss(engine.module, ids, "chunked")
    engine.backward(loss)
    engine.step()
sizes = sorted({s for n, d in dist.comms_logger.comms_dict.items() if "gather" in n for s in d}, reverse=True)
if int(os.environ["RANK"]) == 0:
    print("UNITS", json.dumps({"persist": persist, "gather_sizes": sizes[:6], "elem": next(engine.module.parameters()).element_size()}), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # see tiny_zero3.py
