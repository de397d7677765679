"""What DeepSpeed ZeRO really holds and sends for a model built by the runtime, after training steps on
CPU (gloo). Rank 0 prints one line ``ZERO {...}``:
- master / states: elements of the fp32 master partition and of Adam's m, v on this rank;
  master_aliases_params: whether the master shares storage with the params;
- ZeRO-3 only: persist, elements DeepSpeed keeps unpartitioned (ds_persist); gather_sizes, bytes of
  one rank's share of each distinct all-gather message of the last step, largest first; elem, bytes
  per element."""

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
ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
for _ in range(3):  # the last step runs with ZeRO-3's prefetch trace recorded
    dist.comms_logger.comms_dict.clear()
    loss = causal_lm_loss(engine.module, ids, "chunked")
    engine.backward(loss)
    engine.step()

opt = engine.optimizer
zero3 = hasattr(opt, "fp32_partitioned_groups_flat")
if zero3:
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
if zero3:
    out["persist"] = sum(p.ds_numel for p in engine.module.parameters() if getattr(p, "ds_persist", False))
    out["gather_sizes"] = sorted({s for n, d in dist.comms_logger.comms_dict.items() if "gather" in n for s in d}, reverse=True)[:6]
    out["elem"] = next(engine.module.parameters()).element_size()
if int(os.environ["RANK"]) == 0:
    print("ZERO " + json.dumps(out), flush=True)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # see tiny_zero3.py
