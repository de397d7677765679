"""A real DeepSpeed ZeRO-3 step of the tiny-qwen3 preset on CPU (gloo), for launcher tests.

Env knobs for failure tests: TINY_FAIL_RANK=<r> exits 1 on that rank after init;
TINY_SLEEP=<s> sleeps before the step (so a test can kill a rank); TINY_STEPS=<n>.
"""

import argparse
import json
import os
import sys
import time

import torch
import torch._dynamo  # noqa: F401  (before zero.Init: see reference/deepspeed.md §6)

import deepspeed
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from qwen_ds.models import load_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--local_rank", type=int, default=0)
ap.add_argument("--config", required=True)
args = ap.parse_args()

deepspeed.init_distributed(dist_backend="gloo")
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
with open(args.config) as fh:
    ds_config = json.load(fh)
spec = load_model("tiny-qwen3")
cfg = dict(spec.config)
hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
dschf = HfDeepSpeedConfig(ds_config)  # noqa: F841  keep alive while the model is built under zero.Init
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(hf_cfg)
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
if os.environ.get("TINY_FAIL_RANK") == str(rank):
    print(f"rank {rank} failing on purpose", flush=True)
    os._exit(1)  # not sys.exit: the interpreter's teardown can abort (134) with gloo's threads alive (see the end)
print(f"READY rank {rank}", flush=True)
time.sleep(float(os.environ.get("TINY_SLEEP", "0")))
micro = ds_config["train_micro_batch_size_per_gpu"]
for step in range(int(os.environ.get("TINY_STEPS", "1"))):
    ids = torch.randint(0, spec.vocab_size, (micro, 32), generator=torch.Generator().manual_seed(step * world + rank))
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    print(f"step {step} loss {loss.item():.4f} world {world}", flush=True)
print("TINY_DONE", flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
# about 1 run in 15 aborts after this line at interpreter exit ("terminate called without an active
# exception", 134; DeepSpeed 0.19.8 on CPU, seen after destroy_process_group returned): skip the teardown
sys.stdout.flush()
os._exit(0)
