"""Built-in training entry point, run on every rank by `qwen-ds launch ... train`.

python -m qwen_ds.runtime.train --config ds_config.json --plan plan.json [--synthetic | --data F --tokenizer DIR]
    [--weights DIR] [--steps N] [--save-dir D --save-every K] [--resume | --resume-from TAG] [--metrics-file F]
    [--seed S] [--compile auto|on|off] [--fp8-head] [--profile FILE --profile-step N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
import time
from pathlib import Path

from ..builtin import builtin_gap
from ..launch.payload import LAUNCH_T0
from .compiled import CHOICES as COMPILE_CHOICES
from .common import (RuntimeFailure, exit_process, model_spec, run_entry, build_model, init_distributed, log0,
                     model_config, rank, rank_device, read_config_and_plan, world_size)


PROCESS_T0 = time.time()  # startup is counted from here without qwen-ds launch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="qwen_ds.runtime.train")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--config", required=True, help="ds_config.json")
    ap.add_argument("--plan", default=None, help="plan.json from qwen-ds gen-config (model, seq len, loss path)")
    ap.add_argument("--model", default=None, help="override the plan's model: preset, config.json or HF dir")
    ap.add_argument("--weights", default=None, help="HF model directory with weights (random init when absent)")
    ap.add_argument("--data", default=None, help=".jsonl (field text) or .txt corpus; synthetic tokens when absent")
    ap.add_argument("--tokenizer", default=None, help="local tokenizer directory [--weights]")
    ap.add_argument("--synthetic", action="store_true",
                    help="learnable synthetic sequences (the default without --data)")
    ap.add_argument("--seq-len", type=int, default=None, help="[the plan's seq len, else 2048]")
    ap.add_argument("--loss", choices=("hf", "chunked"), default=None, help="[the plan's loss path, else chunked]")
    ap.add_argument("--checkpointing", choices=("on", "off"), default=None,
                    help="per-layer activation checkpointing [the plan's, else off]; for a config of your own run "
                         "without a plan.json, as the HF Trainer's gradient_checkpointing")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--save-dir", default=None)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --save-dir")
    ap.add_argument("--resume-from", default=None, metavar="TAG",
                    help="continue from checkpoint TAG in --save-dir (e.g. step4; a run saves tags stepN), not the "
                         "latest; implies --resume")
    ap.add_argument("--metrics-file", default=None, help="JSON lines, one per step (rank 0)")
    ap.add_argument("--force", action="store_true",
                    help="start over in a --save-dir that holds a checkpoint and replace an existing --metrics-file")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="profile step --profile-step with torch.profiler and write its top kernels (GPU) or operators "
                         "(CPU) with their share of the step to FILE (markdown)")
    ap.add_argument("--profile-step", type=int, default=3, help="the step --profile records [3: after warm-up]")
    ap.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                    help="torch.compile each decoder layer (runtime/compiled.py); auto: on a CUDA device for dense "
                         "Qwen3 layers without pipeline stages or ZeRO-3 [auto]")
    ap.add_argument("--fp8-head", action="store_true",
                    help="FP8 plans: run the output head's matmuls in float8 too (the plan keeps it bf16 for the "
                         "loss's precision; benchmarks/results/trainer_speed_*.md measures both)")
    ap.add_argument("--comm-profile-every", type=int, default=10,
                    help="time collectives (and, with pipeline stages, each stage's waits for its neighbours) on step "
                         "2 and then every N steps (timing synchronises each, so it is sampled); 0 = never "
                         "(comm_share null)")
    return ap.parse_args(argv)


def activation_checkpointing(choice: str | None, planned: bool | None) -> tuple[bool, str | None]:
    """(on?, a note to print): --checkpointing on|off, else the plan's, else off (a config run without a plan.json)."""
    on = choice == "on" if choice else bool(planned)
    if planned is not None and on != planned:
        return on, (f"note: --checkpointing {choice} overrides the plan's; its activation memory no longer matches "
                    "this run")
    return on, None


def check_outputs(args: argparse.Namespace) -> None:
    """Before anything runs: a new run never writes over a checkpoint or a metrics file a previous run
    left (--resume continues them, --force replaces them)."""
    if args.resume_from is not None:
        args.resume = True
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", args.resume_from):
            raise RuntimeFailure(f"--resume-from {args.resume_from!r}: a checkpoint tag is letters, digits, '.', '_' "
                                 "and '-' (the folder name of the checkpoint in --save-dir, e.g. step4)")
    if args.resume and not args.save_dir:
        raise RuntimeFailure("--resume needs --save-dir")
    if args.resume_from is not None and not (Path(args.save_dir) / args.resume_from).is_dir():
        raise RuntimeFailure(f"--resume-from {args.resume_from}: no checkpoint {args.resume_from} in --save-dir "
                             f"{args.save_dir}")
    if args.force or args.resume:
        return
    if args.save_dir:
        latest = Path(args.save_dir) / "latest"
        if latest.is_file() or (Path(args.save_dir) / "hf").is_dir():
            tag = latest.read_text(encoding="utf-8").strip() if latest.is_file() else "hf weights"
            raise RuntimeFailure(f"--save-dir {args.save_dir} already holds a checkpoint ({tag}); "
                                 "pass --resume to continue it, "
                                 "--force to start over in it, or another --save-dir")
    if (args.metrics_file and rank() == 0 and Path(args.metrics_file).is_file()
            and Path(args.metrics_file).stat().st_size):
        raise RuntimeFailure(f"--metrics-file {args.metrics_file} already has lines of another run; "
                             "pass --force to replace it, "
                             "--resume to continue that run, or another path")


def metrics_for_resume(path: str | None, start: int) -> None:
    """Rank 0 of a run resumed at step ``start`` (or started over with --force: start 0): keep the metrics
    lines up to that step, so steps a crashed run made past its last checkpoint are not listed twice."""
    if not path or rank() != 0 or not Path(path).is_file():
        return
    from ..fileio import write_text_atomic

    def step_of(line: str) -> int | None:
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            return None  # a line cut short by a crash

    lines = Path(path).read_text(encoding="utf-8").splitlines()
    kept = [ln for ln in lines if (step_of(ln) or start + 1) <= start]
    if len(kept) != len(lines):
        write_text_atomic(Path(path), "".join(ln + "\n" for ln in kept))
        log0(f"{path}: kept {len(kept)} metrics lines up to step {start}, dropped {len(lines) - len(kept)}")


def pipeline_stages(ds_config: dict, plan) -> int:
    """Pipeline stages of the run: the plan's pp, else the ds_config's "pipeline": {"stages": N}."""
    if plan is not None:
        return int(plan.plan.pp or 1)
    block = ds_config.get("pipeline")
    stages = block.get("stages", 1) if isinstance(block, dict) else 1
    return stages if isinstance(stages, int) and not isinstance(stages, bool) and stages > 1 else 1


def init_pipeline(args: argparse.Namespace, model, pp: int, ds_config: dict, plan):
    """deepspeed.initialize of the HF model as a PipelineModule of pp stages (runtime/pipeline.py)."""
    import deepspeed

    from .pipeline import build_pipeline_module

    gap = builtin_gap(model.config.model_type, plan.plan, "train") if plan is not None else None
    if gap:  # gen-config marked this plan "needs your own script"
        raise RuntimeFailure(f"{gap}; regenerate the config with gen-config --pp 1, or run it with your own script")
    if world_size() % pp:
        raise RuntimeFailure(f"pp {pp} does not divide the {world_size()} ranks; fix gen-config --pp or the hostfile")
    block = ds_config.get("pipeline") if isinstance(ds_config.get("pipeline"), dict) else {}
    interval = block.get("activation_checkpoint_interval", 0)
    interval = interval if isinstance(interval, int) and (plan is None or plan.plan.checkpointing) else 0
    partition = block.get("partition", "parameters")
    pipe = build_pipeline_module(model, pp, interval, partition if isinstance(partition, str) else "parameters")
    log0(f"pipeline: {pp} stages x dp {world_size() // pp}, layer boundaries {[int(x) for x in pipe.parts]} "
         f"(embedding, {model.config.num_hidden_layers} decoder layers, norm, head), parameters per stage "
         f"{pipe.stage_param_counts} (partition {partition}), activation checkpoint interval {interval}")
    engine, _, _, _ = deepspeed.initialize(model=pipe, config=ds_config,
                                           model_parameters=[p for p in pipe.parameters() if p.requires_grad])
    return engine


def autotp_size(ds_config: dict) -> int:
    """AutoTP's training degree in the config (1 without tensor_parallel.autotp_size)."""
    from ..knobs import lookup

    size = lookup(ds_config, "tensor_parallel.autotp_size")
    return size if isinstance(size, int) and not isinstance(size, bool) else 1


def data_rank(engine) -> tuple[int, int]:
    """(data-parallel rank, data-parallel degree) of this rank: the batches a rank trains on depend on these
    only, so the ranks of one tensor-parallel group or one pipeline are fed alike (DeepSpeed's AutoTP
    asserts it on the first forward)."""
    grid = getattr(engine, "grid", None)  # PipelineEngine's topology
    if grid is not None:
        return grid.get_data_parallel_rank(), engine.dp_world_size
    from deepspeed.utils import groups  # AutoTP's (dp, tp) mesh; the whole world without TP

    return groups._get_data_parallel_rank(), engine.dp_world_size


def batch_source(args: argparse.Namespace, engine, data, vocab: int, seq: int):
    """make(step, k): the micro-batch this rank trains on at micro-step k of a step (runtime/data.py numbering)."""
    from .data import sample_index, synthetic_sample

    micro, ga = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    d, dp = data_rank(engine)

    def make(step: int, k: int):
        j = sample_index(d, dp, k)
        if data is not None:
            return data.batch(micro, step, j, dp * ga)
        return synthetic_sample(vocab, micro, seq, args.seed, step, j, world_size())

    return make


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_entry(train, args)


def train(args: argparse.Namespace) -> int:
    import deepspeed
    import torch

    from ..models.counts import model_flops_per_token
    from .data import TokenFile
    from .loss import _chunk_loss, causal_lm_loss, compiled_chunk_loss
    from .metrics import StepMeter, append_jsonl, gpu_peak_tflops, model_states_by_rank
    from ..planner.throughput import bubble_fraction
    from .pipeline import StageProbe, pipeline_batches
    from .profile import profiled_step

    ds_config, plan = read_config_and_plan(args)
    check_outputs(args)
    device = init_distributed()
    if plan is not None and torch.cuda.is_available():
        from .metrics import allocator_note

        note = allocator_note(plan.plan.allocator, dict(os.environ))
        if note:
            log0(note)
    if args.comm_profile_every > 0:
        ds_config.setdefault("comms_logger", {"enabled": True, "verbose": False, "prof_all": True, "debug": False})
    hf_config = model_config(plan, args.model)
    # without a plan.json: the runtime's own defaults (a short synthetic run), named in --help
    seq = args.seq_len or (plan.workload.seq_len if plan else 2048)
    loss_path = args.loss or (plan.plan.loss if plan else "chunked")
    pp = pipeline_stages(ds_config, plan)
    if pp > 1:
        loss_path = "chunked"  # the pipeline's loss_fn (runtime/pipeline.py) is the chunked one
    elif loss_path == "hf" and plan and plan.plan.loss == "hf":
        log0("note: plan uses the plain HF loss (full fp32 logits); --loss chunked saves that memory")
    checkpointing, note = activation_checkpointing(args.checkpointing, plan.plan.checkpointing if plan else None)
    if note:
        log0(note)
    # pipeline stages: the whole model is built on the host, each stage then keeps (and moves) its layers
    knobs = plan.plan if plan is not None else None
    zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    qlora = knobs is not None and knobs.finetune == "qlora"  # built on the host, quantized layer by layer onto the GPU
    model, keep = build_model(hf_config, ds_config, args.weights, args.seed, for_training=True,
                              on_device=pp == 1 and not qlora)
    from .peft import apply_finetune, frozen_digest, save_adapter

    base_digest = None
    if knobs is not None and knobs.finetune != "full":
        if pp > 1:
            raise RuntimeFailure(f"--finetune {knobs.finetune} with pipeline stages: the built-in trainer fine-tunes "
                                 "without them; regenerate with gen-config --pp 1")
        model, line = apply_finetune(model, knobs, rank_device(), zero_stage)
        log0(line)
        base_digest = frozen_digest(model)
    from .fp8 import apply_fp8, check_fp8_device, fp8_share

    if args.fp8_head and not (plan is not None and plan.wants_fp8):
        log0("note: --fp8-head ignored: the plan is not FP8 (gen-config --precision fp8)")
    if plan is not None and plan.wants_fp8:
        converted = apply_fp8(model, plan.fp8_recipe, head=args.fp8_head)
        log0(f"FP8: {converted} Linear layers converted to torchao float8 training on {check_fp8_device()} "
             f"({fp8_share(model):.0%} of the matmul weights; "
             f"{'' if args.fp8_head else 'the head, '}routers and fused MoE experts stay bf16)")
    from ..builtin import COMPILED_MODEL_TYPES
    from .compiled import compile_layers, compile_reason

    tp = autotp_size(ds_config)
    run = (hf_config.model_type, pp, zero_stage, tp, torch.cuda.is_available(), knobs.finetune if knobs else "full")
    why_not = compile_reason(args.compile, *run)
    compiled = 0 if why_not else compile_layers(model)
    log0(f"torch.compile: {compiled} decoder layers (step 1 pays the compile; Inductor caches it on this machine)"
         if compiled else f"torch.compile: off ({why_not or 'the model has no decoder layer list'})")
    kernels = plan.plan.kernels if plan is not None else None
    if compiled and kernels == "hf":  # measured on an H200: compiled Qwen3-4B peaks 2.8 % under the fused estimate
        log0("note: the plan's activation memory is for eager HF kernels (--kernels hf); the compiled layers use "
             "less, close to gen-config --kernels fused")
    elif not compiled and kernels == "fused" and hf_config.model_type in COMPILED_MODEL_TYPES:
        could = compile_reason("on", *run) is None  # --compile on would compile these layers
        log0("warning: the plan counts fused kernels (--kernels fused) but the layers run eager here: activation "
             f"memory will exceed the estimate (gen-config --kernels hf{', or train --compile on' if could else ''})")
    # AutoTP's vocab-parallel head calls DeepSpeed's collectives inside the chunk: left eager
    chunk_loss = compiled_chunk_loss() if compiled and tp == 1 else _chunk_loss
    from .ops import pending_op_builds

    pending = pending_op_builds(ds_config, torch.cuda.is_available())
    if pending:  # otherwise a silent minute inside deepspeed.initialize
        log0(f"building DeepSpeed op{'s' if len(pending) > 1 else ''} {', '.join(pending)} (first use on this "
             "machine, about a minute each; cached for later runs)")
    if pp > 1:
        engine = init_pipeline(args, model, pp, ds_config, plan)
    else:
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA / freeze: the optimizer sees these
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    micro, ga = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    dp = engine.dp_world_size if hasattr(engine, "dp_world_size") else world_size()
    start = 0
    if args.resume:
        path, client = engine.load_checkpoint(args.save_dir, tag=args.resume_from)
        if path is None:
            raise RuntimeFailure(f"--resume: no checkpoint in {args.save_dir}")
        start = int(client["step"])
        log0(f"resumed from {path} at step {start}")
    metrics_for_resume(args.metrics_file, start)
    data = TokenFile(args.data, args.tokenizer or args.weights or "", seq) if args.data else None
    make_batch = batch_source(args, engine, data, hf_config.vocab_size, seq)
    probe = StageProbe(engine) if pp > 1 else None
    spec = model_spec(plan, args.model)
    precision = ("bf16" if ds_config.get("bf16", {}).get("enabled")
                 else "fp16" if ds_config.get("fp16", {}).get("enabled") else "fp32")
    meter = StepMeter(model_flops_per_token(spec, seq), micro * ga * dp * seq, world_size(), gpu_peak_tflops(precision))
    bar = None
    if rank() == 0 and sys.stdout.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=args.steps, initial=start, unit="step")
        except ImportError:
            bar = None
    r = rank()
    import deepspeed.comm as ds_comm

    def profiled(step_no: int) -> bool:  # 1-based step numbers: 2, 2 + N, 2 + 2N, ...
        n = args.comm_profile_every
        return n > 0 and step_no >= 2 and (step_no - 2) % n == 0

    def one_step(step: int) -> dict:
        """One optimizer step (grad_accum micro-batches, or the pipeline's schedule); its metrics record."""
        meter.start()
        if pp > 1:
            probe.timing = profiled(step + 1)
            loss = engine.train_batch(pipeline_batches(functools.partial(make_batch, step), ga))
            rec = meter.stop(step + 1, float(loss))  # the mean micro-batch loss, the same on every rank
            rec.update(pp=pp, bubble_fraction=round(bubble_fraction(pp, ga), 6))
            if probe.timing:  # measured: seconds each stage waited for its neighbours (and that share of the
                # step), and the most micro-batches each stage held in flight
                rec["stage_idle_s"], rec["stage_in_flight"] = probe.per_stage(engine)
                rec["stage_idle_share"] = [round(s / rec["step_s"], 4) for s in rec["stage_idle_s"]]
            return rec
        total = torch.zeros(1, device=device, dtype=torch.float32)  # summed on the device: no host sync per micro-step
        for m in range(ga):
            ids = make_batch(step, m).to(device)
            loss = causal_lm_loss(engine.module, ids, loss_path, chunk_loss=chunk_loss)
            engine.backward(loss)
            engine.step()
            total += loss.detach().float() / ga
        torch.distributed.all_reduce(total)
        return meter.stop(step + 1, total.item() / world_size())

    last_comm_share = None
    for step in range(start, args.steps):
        logger = getattr(ds_comm, "comms_logger", None)
        if logger is not None and args.comm_profile_every > 0:
            logger.enabled = profiled(step + 1)
        if step == start:  # from `qwen-ds launch` (or this rank's wrapper) to the first step
            startup_s = time.time() - float(os.environ.get(LAUNCH_T0) or PROCESS_T0)
        with profiled_step(args.profile if r == 0 else None, step + 1 == args.profile_step):
            rec = one_step(step)
        if args.profile and step + 1 == args.profile_step:
            rec["torch_profiled"] = True  # this step's time includes the profiler's overhead
        if step == start:  # what each rank holds once the optimizer states exist (rank 0 writes it)
            rec["model_states"] = model_states_by_rank(engine)
            rec.update(startup_s=round(startup_s, 3), first_step_s=rec["step_s"], compiled_layers=compiled)
            log0(f"startup: {startup_s:.1f} s from launch to step {start + 1} (imports, model build, DeepSpeed "
                 f"init{', op builds' if pending else ''}); step {start + 1} took {rec['step_s']:.1f} s")
        if profiled(step + 1):
            last_comm_share = rec["comm_share"]
        else:  # unprofiled steps run at full speed; report the last sampled share
            rec["comm_share"] = last_comm_share
        rec["comm_profiled"] = profiled(step + 1)
        if r == 0:
            if args.metrics_file:
                append_jsonl(args.metrics_file, rec)
            for warning in meter.health(rec) if step + 1 >= min(3, args.steps) else []:
                print(f"warning: {warning}", flush=True)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")
            else:
                print(f"step {step + 1} loss {rec['loss']:.6f} tokens/s {rec['tokens_per_s']:.0f}", flush=True)
        if args.save_dir and args.save_every and (step + 1) % args.save_every == 0:
            engine.save_checkpoint(args.save_dir, tag=f"step{step + 1}", client_state={"step": step + 1})
    if bar:
        bar.close()
    if base_digest is not None:  # the frozen base must come out as it went in
        after = frozen_digest(engine.module)
        if after != base_digest:
            raise RuntimeFailure(f"--finetune {knobs.finetune}: the frozen base changed during training "
                                 f"(sha256 {base_digest[:12]} -> {after[:12]})")
        log0(f"{knobs.finetune}: frozen base unchanged (sha256 {after[:16]})")
    if args.save_dir:
        engine.save_checkpoint(args.save_dir, tag=f"step{args.steps}", client_state={"step": args.steps})
        out = os.path.join(args.save_dir, "hf")
        if knobs is not None and knobs.finetune in ("lora", "qlora"):
            save_adapter(engine, os.path.join(args.save_dir, "adapter"), r)
            log0(f"saved DeepSpeed checkpoint and the LoRA adapter in {os.path.join(args.save_dir, 'adapter')}")
            del keep
            return 0
        if pp > 1:  # save_16bit_model would write the first stage's layers only
            from .pipeline import save_hf_shards

            save_hf_shards(engine, out, hf_config)
        elif autotp_size(ds_config) > 1 and ds_config.get("zero_optimization", {}).get("stage") != 3:
            # below ZeRO-3, DeepSpeed 0.19.8's save_16bit_model writes rank 0's TP shards (half-size tensors
            # that from_pretrained refuses); its TP-gathering state dict is what it uses under ZeRO-3
            state = engine._replace_module_consolidated_state_dict()
            if r == 0:
                os.makedirs(out, exist_ok=True)
                torch.save(state, os.path.join(out, "pytorch_model.bin"))
        else:
            engine.save_16bit_model(out)
        if r == 0:
            hf_config.save_pretrained(out)
            log0(f"saved DeepSpeed checkpoint and 16-bit HF weights in {out}")
    del keep
    return 0


if __name__ == "__main__":
    exit_process(main())
