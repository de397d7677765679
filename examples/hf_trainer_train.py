"""Train a Qwen3 model with the HF Trainer under the DeepSpeed config `qwen-ds gen-config --for hf-trainer` wrote.

    qwen-ds gen-config -m tiny-qwen3 -g H100-SXM --hostfile hostfile --for hf-trainer -o run/
    qwen-ds launch --hostfile hostfile --config run/ds_config.json --plan run/plan.json --master-port auto \\
        examples/hf_trainer_train.py --training-args run/training_args.json --model tiny-qwen3 --steps 10

training_args.json holds the TrainingArguments the memory estimate was made for (micro-batch, grad-accum,
precision, checkpointing) and the path of ds_config.json ("deepspeed"); the HF Trainer fills the config's
"auto" values from them. The model is built from its config with random weights and trained on random
token ids: replace build_model() and synthetic_dataset() with your own model and data.

For a LoRA plan (`gen-config --finetune lora --lora-rank R --for hf-trainer`), pass `--lora-rank R`: the model is
wrapped with peft before the Trainer sees it, and the Trainer's optimizer covers the adapters only (the config allows
that optimizer: zero_allow_untested_optimizer).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile

import torch
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments


def model_config(name: str) -> dict:
    """A config.json path, or a qwen-ds preset name (qwen-ds models)."""
    if os.path.isfile(name):
        with open(name, encoding="utf-8") as f:
            return json.load(f)
    from qwen_ds.models import load_model  # presets ship with qwen-ds

    return dict(load_model(name).config)


def build_model(name: str) -> torch.nn.Module:
    config = model_config(name)
    config.pop("architectures", None)
    config.pop("torch_dtype", None)  # the Trainer and DeepSpeed choose the training precision
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config))


def synthetic_dataset(vocab_size: int, seq_len: int, rows: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token ids; labels = input_ids (the model shifts them for next-token loss)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rows, seq_len), generator=gen)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


def single_process_env() -> None:
    """Run without a launcher (plain `python script.py`): DeepSpeed would otherwise look for MPI."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--training-args", required=True, help="training_args.json written by qwen-ds gen-config")
    parser.add_argument("--model", required=True, help="qwen-ds preset name or a config.json path")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (overrides max_steps)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per synthetic sequence")
    parser.add_argument("--output-dir", default=None, help="Trainer output directory [a temporary one]")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (peft, all-linear, alpha 2r) [0: full]")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)  # the launcher's
    args = parser.parse_args()
    single_process_env()

    with open(args.training_args, encoding="utf-8") as f:
        fields = json.load(f)
    fields["max_steps"] = args.steps
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="hf_trainer_train.")
    training_args = TrainingArguments(output_dir=output_dir, report_to=[], save_strategy="no", logging_steps=1,
                                      use_cpu=not torch.cuda.is_available(), **fields)
    if training_args.use_cpu:  # on GPUs TrainingArguments starts DeepSpeed's comm; on CPU (gloo) only torch's,
        import deepspeed  # and ZeRO-3's zero.Init in from_config would then see a world of 1

        deepspeed.init_distributed(dist_backend="gloo")

    model = build_model(args.model)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    batch = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    rows = batch * training_args.world_size * args.steps
    data = synthetic_dataset(model.config.vocab_size, args.seq_len, rows)
    trainer = Trainer(model=model, args=training_args, train_dataset=data)
    result = trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    if trainer.is_world_process_zero():
        trained = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
        print(f"deepspeed: {trainer.is_deepspeed_enabled}, world size {training_args.world_size}, "
              f"{result.global_step} steps, {trained:,} parameters trained")
        print(f"final loss {losses[-1]:.4f} (mean {result.training_loss:.4f})")


if __name__ == "__main__":
    main()
