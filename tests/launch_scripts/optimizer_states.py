"""What DeepSpeed's ZeRO optimizer really holds on one rank after a training step of a model built by
the runtime (CPU, gloo): fp32 master partition elements, whether they alias the params, and Adam state
elements. Rank 0 prints ``STATES {"master": N, "master_aliases_params": bool, "states": N}``."""

import argparse
import json
import os
import sys

import torch
import torch._dynamo  # noqa: F401  (before zero.Init)

import deepspeed

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
model, keep = build_model(model_config(None, args.model), ds_config, None, 0, for_training=True)
engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
loss = causal_lm_loss(engine.module, ids, "chunked")
engine.backward(loss)
engine.step()

opt = engine.optimizer
if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO-3
    masters = list(opt.fp32_partitioned_groups_flat)
    params = [p.ds_tensor for p in engine.module.parameters()]
else:  # ZeRO-1/2
    masters = list(opt.single_partition_of_fp32_groups)
    params = [p for group in opt.parallel_partitioned_bit16_groups for p in group]
ptrs = {p.untyped_storage().data_ptr() for p in params}
inner = getattr(opt, "optimizer", opt)
out = {"master": sum(t.numel() for t in masters),
       "master_aliases_params": any(t.untyped_storage().data_ptr() in ptrs for t in masters),
       "states": sum(v.numel() for st in inner.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)}
if int(os.environ["RANK"]) == 0:
    print("STATES " + json.dumps(out), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # see tiny_zero3.py
