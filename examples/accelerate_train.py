"""Train a Qwen3 model with an accelerate loop under the DeepSpeed config `qwen-ds gen-config --for accelerate` wrote.

    qwen-ds gen-config -m tiny-qwen3 -g H100-SXM --hostfile hostfile --for accelerate -o run/
    qwen-ds launch --hostfile hostfile --config run/ds_config.json --plan run/plan.json --master-port auto \\
        examples/accelerate_train.py --config run/ds_config.json --training-args run/training_args.json \\
        --model tiny-qwen3 --steps 10

The accelerate flavour has no optimizer or scheduler block: this loop brings its own AdamW (accelerate
refuses an optimizer in both places). Random weights and random token ids: replace build_model() and
the dataset with your own.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin

from hf_trainer_train import build_model, single_process_env, synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="ds_config.json written by qwen-ds gen-config --for accelerate")
    parser.add_argument("--training-args", required=True, help="training_args.json written beside it")
    parser.add_argument("--model", required=True, help="qwen-ds preset name or a config.json path")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per synthetic sequence")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # the launcher's
    args = parser.parse_args()
    single_process_env()
    with open(args.config, encoding="utf-8") as f:
        ds_config = json.load(f)
    with open(args.training_args, encoding="utf-8") as f:
        targs = json.load(f)

    # not cpu=True: accelerate then silently runs without DeepSpeed; DeepSpeed finds the CPU by itself
    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config))
    model = build_model(args.model)
    if targs.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=targs["learning_rate"],
                                  betas=(targs["adam_beta1"], targs["adam_beta2"]), eps=targs["adam_epsilon"],
                                  weight_decay=targs["weight_decay"])
    micro, accum = targs["per_device_train_batch_size"], targs["gradient_accumulation_steps"]
    data = synthetic_dataset(model.config.vocab_size, args.seq_len, micro * accum * accelerator.num_processes * 4)
    loader = torch.utils.data.DataLoader(data, batch_size=micro, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    model.train()
    losses = []
    for batch in itertools.islice(itertools.cycle(loader), args.steps * accum):
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)  # DeepSpeed's engine steps the optimizer at the accumulation boundary
            optimizer.step()
            optimizer.zero_grad()
        losses.append(accelerator.reduce(loss.detach().float(), reduction="mean").item())
    if accelerator.is_main_process:
        print(f"deepspeed: {type(model).__name__}, world size {accelerator.num_processes}, "
              f"{args.steps} steps x {accum} micro-batches of {micro}")
        print(f"final loss {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
