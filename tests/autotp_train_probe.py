"""What DeepSpeed 0.19.8's AutoTP *training* path (``"tensor_parallel": {"autotp_size": N}`` in the
training config, applied inside ``deepspeed.initialize``; ``deepspeed.tp_model_init`` only records
arguments in 0.19) really splits, for a tiny HF model built from a qwen-ds preset config.

Run under the DeepSpeed launcher (2 CPU ranks, DS_ACCELERATOR=cpu). Each rank writes
``<out>/rank<R>.json``:
- params: {name: [local numel, full numel]} for every named parameter (tied ones listed under each name);
- replaced: {module path: [class before, class after]} for the modules AutoTP swapped for TP layers;
- local_total / full_total: parameters of this rank / of the model, each tensor counted once;
- head_out: last dim of the output head's own output (vocab, or vocab / TP when DeepSpeed leaves it sharded);
- loss: the loss of one training step on data identical on every rank (seeded), and loss_after: the
  loss of the same batch after that step;
- error: set instead of the above when deepspeed.initialize refuses the model (exit status 3), or when the
  first forward refuses a batch that differs within the TP group (--rank-data, exit status 4).
"""

import argparse
import json
import math
import os
import sys

import torch
import torch._dynamo  # noqa: F401  (before deepspeed)

import deepspeed
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from qwen_ds.models import load_model  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--local_rank", type=int, default=0)
ap.add_argument("--model", required=True, help="qwen-ds preset name (tiny-qwen3, ...)")
ap.add_argument("--out", required=True, help="folder for rank<R>.json")
ap.add_argument("--zero", type=int, default=1)
ap.add_argument("--tp", type=int, default=2)
ap.add_argument("--set", default="{}", help="JSON object of config.json overrides")
ap.add_argument("--rank-data", action="store_true", help="a different batch on each rank (DeepSpeed should refuse it)")
args = ap.parse_args()

deepspeed.init_distributed(dist_backend="gloo")
rank = int(os.environ["RANK"])
world = int(os.environ["WORLD_SIZE"])

raw = {**dict(load_model(args.model).config), **json.loads(args.set)}
model_type = raw.pop("model_type")
for key in ("architectures", "torch_dtype"):
    raw.pop(key, None)
cfg = AutoConfig.for_model(model_type, **raw)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg).float()

full = {n: p.numel() for n, p in model.named_parameters(remove_duplicate=False)}
full_total = sum(p.numel() for p in model.parameters())
before = {n: type(m).__name__ for n, m in model.named_modules()}

micro = 2
ds_config = {
    "train_micro_batch_size_per_gpu": micro,
    "gradient_accumulation_steps": 1,
    # DeepSpeedConfig checks the batch against dist.get_world_size() (no mpu is passed, the TP groups are
    # made later in the engine): TP ranks count as data-parallel ranks in this arithmetic.
    "train_batch_size": micro * world,
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
    "zero_optimization": {"stage": args.zero},
    "bf16": {"enabled": False},
    "fp16": {"enabled": False},
    "tensor_parallel": {"autotp_size": args.tp},
    "steps_per_print": 1000,
}
os.makedirs(args.out, exist_ok=True)
path = os.path.join(args.out, f"rank{rank}.json")


def leave(status: int) -> None:
    """Exit once every rank has written its result, skipping C++ static destructors: a gloo / DeepSpeed helper
    thread torn down joinable at interpreter exit aborts the process ("terminate called without an active
    exception") after a run that succeeded (see qwen_ds.runtime.common.exit_process). The barrier keeps rank 0
    (the rendezvous store) alive until the others are done, or their collectives fail with "Broken pipe"."""
    import datetime

    try:
        torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=120))
        torch.distributed.destroy_process_group()
    except RuntimeError:  # a rank that never got here: leave anyway, with this rank's status
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


try:
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
except Exception as exc:  # the refusal is the result for a family AutoTP cannot run
    with open(path, "w") as fh:
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, fh)
    leave(3)

module = engine.module
after = {n: type(m).__name__ for n, m in module.named_modules()}
replaced = {n: [before[n], cls] for n, cls in after.items() if n in before and before[n] != cls}
params = {n: [p.numel(), full.get(n)] for n, p in module.named_parameters(remove_duplicate=False)}
local_total = sum(p.numel() for p in module.parameters())

ids = torch.randint(0, cfg.vocab_size, (micro, 32), generator=torch.Generator().manual_seed(1 + rank * args.rank_data))
try:
    loss = engine(input_ids=ids, labels=ids).loss
except AssertionError as exc:  # DeepSpeed's first-forward check that a TP group got one batch
    with open(path, "w") as fh:
        json.dump({"error": f"AssertionError: {exc}"}, fh)
    leave(4)
engine.backward(loss)
engine.step()
with torch.no_grad():
    loss_after = engine(input_ids=ids, labels=ids).loss.item()
    # what a loss that calls the head itself (qwen_ds.runtime.loss chunked path) gets: full or vocab-shard logits
    head_out = module.get_output_embeddings()(torch.zeros(1, 1, cfg.hidden_size)).shape[-1]
out = {"model": args.model, "zero": args.zero, "tp": args.tp, "world": world, "params": params, "replaced": replaced,
       "local_total": local_total, "head_out": head_out, "full_total": full_total, "loss": loss.item(),
       "loss_after": loss_after, "finite": math.isfinite(loss.item()) and math.isfinite(loss_after)}
with open(path, "w") as fh:
    json.dump(out, fh, indent=1)
leave(0)
