"""Count the ZeRO-3 parameter all-gathers of one training micro-step, HF loss path vs the chunked
loss, with the runtime's own model builder and loss (tiny-qwen3 on CPU, gloo). Rank 0 prints
``GATHERS {"hf": [ops, ops of the largest message], "chunked": [...], "chunks": C}``; the largest
message is the embedding, tied to the head."""

import argparse
import json
import os
import sys

import torch
import torch._dynamo  # noqa: F401  (before zero.Init: see reference/deepspeed.md §6)

import deepspeed
import deepspeed.comm as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from qwen_ds.runtime.common import build_model, model_config  # noqa: E402
from qwen_ds.runtime.loss import causal_lm_loss  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--local_rank", type=int, default=0)
ap.add_argument("--config", required=True)
ap.add_argument("--seq", type=int, default=64)
ap.add_argument("--chunk", type=int, default=16)
args = ap.parse_args()

deepspeed.init_distributed(dist_backend="gloo")
with open(args.config) as fh:
    ds_config = json.load(fh)
ds_config["comms_logger"] = {"enabled": True, "prof_all": True, "verbose": False, "debug": False}
model, keep = build_model(model_config(None, "tiny-qwen3"), ds_config, None, 0, for_training=True)
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
ids = torch.randint(0, model.config.vocab_size, (engine.train_micro_batch_size_per_gpu(), args.seq),
                    generator=torch.Generator().manual_seed(0))


def gathers(path: str) -> list[int]:
    dist.comms_logger.comms_dict.clear()
    loss = causal_lm_loss(engine.module, ids, path, chunk=args.chunk)
    engine.backward(loss)
    engine.step()
    ops = {size: rec[0] for name, sizes in dist.comms_logger.comms_dict.items() if "gather" in name for size, rec in sizes.items()}
    return [sum(ops.values()), ops[max(ops)]]


for _ in range(2):  # warm up: ZeRO-3 records its prefetch trace on the first steps
    gathers("hf")
    gathers("chunked")
out = {"hf": gathers("hf"), "chunked": gathers("chunked"), "chunks": -(-ids.numel() // args.chunk)}
if int(os.environ["RANK"]) == 0:
    print("GATHERS " + json.dumps(out), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # see tiny_zero3.py: skip the interpreter teardown that sometimes aborts (134)
