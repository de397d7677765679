"""Built-in inference entry point, run on every rank by `qwen-ds launch ... infer`.

Config decides the engine: a ZeRO stage-3 config = ZeRO-Inference (weights partitioned / offloaded
to CPU or NVMe, streamed layer by layer; every rank serves its share of the prompts, forwards kept
in lockstep with synced_gpus); otherwise DeepSpeed-Inference with AutoTP (tensor_parallel.tp_size,
kernel injection off; every rank runs the same prompts). Greedy HF generate.

Prompts: --prompts FILE (.jsonl with "prompt" text or "input_ids", or plain text lines) or stdin.
Output: JSON lines on rank 0 (--output FILE or stdout): index, output_ids, text, ttft_s, tokens_per_s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plandoc import PlanDocument

from .common import (RuntimeFailure, exit_process, model_spec, run_entry, build_model, init_distributed, log0,
                     model_config, rank, read_config_and_plan, torch_dtype, world_size)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="qwen_ds.runtime.infer")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", required=True)
    ap.add_argument("--plan", default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--weights", default=None, help="HF model directory (random init with --seed when absent)")
    ap.add_argument("--tokenizer", default=None, help="local tokenizer directory [--weights]; needed for text prompts")
    ap.add_argument("--prompts", default="-", help="file of prompts, '-' for stdin")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="[the plan's new tokens, else 32]")
    ap.add_argument("--output", default="-")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args(argv)


def read_prompts(path: str) -> list[dict]:
    fh = sys.stdin if path == "-" else open(path, encoding="utf-8")
    out = []
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    raise RuntimeFailure(f"--prompts line {n}: not JSON") from None
                if "input_ids" in obj:
                    out.append({"input_ids": [int(t) for t in obj["input_ids"]]})
                elif "prompt" in obj:
                    out.append({"prompt": str(obj["prompt"])})
                else:
                    raise RuntimeFailure(f"--prompts line {n}: expected \"prompt\" or \"input_ids\"")
            else:
                out.append({"prompt": line.rstrip("\n")})
    if not out:
        raise RuntimeFailure("no prompts (give --prompts FILE or lines on stdin)")
    return out


class FirstTokenTimer:
    """A generate() streamer that records when the first new token arrives (time to first token)."""

    def __init__(self):
        self.calls, self.first = 0, None

    def put(self, _value):
        self.calls += 1
        if self.calls == 2 and self.first is None:  # call 1 is the prompt
            self.first = time.perf_counter()

    def end(self):
        pass


def planned_weights(plan: PlanDocument | None) -> str:
    """' (plan: N)' with the weights per GPU plan.json predicted, in parameters; '' without a plan."""
    from ..units import bytes_per_element

    if plan is None or plan.memory is None or "weights" not in plan.memory.terms:
        return ""
    return f" (plan: {plan.memory.terms['weights'] // bytes_per_element(plan.plan.precision):,})"


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_entry(infer, args)


def infer(args: argparse.Namespace) -> int:
    import deepspeed
    import torch
    import torch.distributed as dist

    ds_config, plan = read_config_and_plan(args)
    device = init_distributed()
    hf_config = model_config(plan, args.model)
    hf_config.use_cache = True
    new_tokens = args.max_new_tokens or (plan.workload.new_tokens if plan else 0) or 32
    prompts = read_prompts(args.prompts)
    tok = None
    if any("prompt" in p for p in prompts):
        from transformers import AutoTokenizer

        tdir = args.tokenizer or args.weights
        if not tdir:
            raise RuntimeFailure("text prompts need --tokenizer DIR (or --weights with a tokenizer); or give input_ids")
        tok = AutoTokenizer.from_pretrained(tdir, local_files_only=True)
    zero3 = ds_config.get("zero_optimization", {}).get("stage") == 3
    world, r = world_size(), rank()
    tp = ds_config.get("tensor_parallel", {}).get("tp_size", world)
    if not zero3 and tp > 1:
        from ..sharding import autotp_unsupported

        why = autotp_unsupported(model_spec(plan, args.model))
        if why:
            raise RuntimeFailure(f"tensor_parallel.tp_size {tp} in {args.config}: {why}")
    model, keep = build_model(hf_config, ds_config, args.weights, args.seed, for_training=False)
    if zero3:
        engine = deepspeed.initialize(model=model, config=ds_config)[0]
        engine.module.eval()
        net = engine.module
        mine = list(range(r, len(prompts), world))
        rounds = -(-len(prompts) // world)  # ZeRO-3: every rank runs the same number of generate calls
    else:
        engine = deepspeed.init_inference(model, tensor_parallel={"tp_size": tp}, dtype=torch_dtype(ds_config),
                                          replace_with_kernel_inject=bool(
                                              ds_config.get("replace_with_kernel_inject", False)))
        net = engine.module
        log0(f"weights on rank 0: {sum(p.numel() for p in net.parameters()):,} parameters after AutoTP tp {tp}"
             f"{planned_weights(plan)}")
        mine = list(range(len(prompts)))
        rounds = len(prompts)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    results = []
    for k in range(rounds):
        idx = mine[k] if k < len(mine) else mine[-1] if mine else 0
        p = prompts[idx]
        ids = torch.tensor([p["input_ids"]]) if "input_ids" in p else tok(p["prompt"], return_tensors="pt")["input_ids"]
        ids = ids.to(device)
        timer = FirstTokenTimer()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = net.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               do_sample=False, synced_gpus=zero3 and world > 1, streamer=timer,
                               pad_token_id=hf_config.eos_token_id or 0)
        dt = time.perf_counter() - t0
        if k < len(mine):
            gen = out[0, ids.shape[1]:].tolist()
            rec = {"index": idx, "output_ids": gen, "ttft_s": (timer.first - t0) if timer.first else dt,
                   "tokens_per_s": len(gen) / dt if dt else None}
            if tok is not None:
                rec["text"] = tok.decode(gen, skip_special_tokens=True)
            results.append(rec)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if r == 0:
        merged = {}
        for part in gathered if zero3 else [results]:
            for rec in part:
                merged[rec["index"]] = rec
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        fh = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
        for i in sorted(merged):
            rec = merged[i]
            rec["peak_allocated_bytes"] = peak
            fh.write(json.dumps(rec) + "\n")
        if fh is not sys.stdout:
            fh.close()
        log0(f"generated {sum(len(v['output_ids']) for v in merged.values())} tokens for {len(merged)} prompts "
             f"({'ZeRO-Inference' if zero3 else 'DeepSpeed-Inference AutoTP'}, world {world})")
    del keep
    return 0


if __name__ == "__main__":
    exit_process(main())
