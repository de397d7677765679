"""Checks before anything starts: config vs cluster, plan vs hostfile, entry, port, backend."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from ..pairing import mismatch_line, unchecked_line
from ..plandoc import PlanDocument, read_plan_document
from .build import BACKEND_BINARY, LaunchRequest, LaunchSpec
from .ports import port_free


def read_plan(path: str | None) -> PlanDocument | None:
    """plan.json with the types of its fields checked (InputError, one line), or None without --plan."""
    return read_plan_document(path, "--plan") if path else None


def _stderr_warning(message: str) -> None:
    print(f"warning: preflight: {message}", file=sys.stderr, flush=True)


def preflight(req: LaunchRequest, spec: LaunchSpec, warn: Callable[[str], None] = _stderr_warning) -> list[str]:
    """Problems found, each one line naming the fix. Empty = ready to launch. ``warn`` gets what
    does not stop a launch (a plan.json too old to be checked against the config)."""
    from ..validate import Context, validate_config
    from ..validate.parse import read_config

    problems: list[str] = []
    hf = req.hostfile
    plan = read_plan(req.plan)
    pp = plan.plan.pp if plan else 1
    cfg = read_config(req.config)
    if plan is not None:
        pair = plan.check_config(cfg)
        if pair.status == "mismatch":
            problems.append(mismatch_line(req.config, req.plan, pair))
        elif pair.status == "unchecked":
            warn(unchecked_line(req.config, req.plan))
    chosen = {h: len(ids) for h, ids in spec.resources.items()}  # slots per host after --include / --exclude
    world = sum(chosen.values())
    per_node = set(chosen.values())
    gpn = per_node.pop() if len(per_node) == 1 else None
    ctx = Context(world_size=world, gpus_per_node=gpn, pp=pp)
    from ..consumers import as_run, hf_fillable

    if hf_fillable(cfg) and spec.entry_kind == "builtin":
        problems.append(f"{req.config} has \"auto\" for the HF Trainer to fill (gen-config --for hf-trainer); the "
                        "built-in runtime runs DeepSpeed configs: regenerate with --for deepspeed, or launch your "
                        "HF Trainer script")
    # an HF Trainer config is checked as the Trainer will run it: "auto" filled from plan.json's train_args
    for p in validate_config(as_run(cfg, world, plan), ctx):
        if p.severity == "error":
            problems.append(f"{req.config}: {p.path}: {p.message}")
    cl = plan.cluster if plan is not None else None
    if cl is not None:
        if gpn is not None and cl.gpus_per_node not in (None, gpn):
            problems.append(f"{req.plan}: planned for {cl.gpus_per_node} GPUs per node "
                            f"but {hf.path} (after filters) gives {gpn}; "
                            "regenerate the plan with --hostfile")
        if cl.world_size not in (None, world):
            problems.append(f"{req.plan}: planned for {cl.world_size} GPUs but {hf.path} (after filters) has {world}; "
                            "regenerate the plan with --hostfile")
    if spec.entry_kind == "script":
        if not Path(spec.entry_target).is_file():
            problems.append(f"entry script {spec.entry_target} does not exist")
    else:
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(spec.entry_target) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            hint = " (the built-in runtime needs the [runtime] extra)" if spec.entry_kind == "builtin" else ""
            problems.append(f"entry module {spec.entry_target} cannot be imported{hint}")
    if (plan is not None and plan.plan.precision == "fp8" and spec.entry_kind == "builtin"
            and importlib.util.find_spec("torchao") is None):
        problems.append(f"{req.plan} is an FP8 plan and the built-in runtime needs torchao for it: "
                        "pip install 'qwen-ds[fp8]'")
    if importlib.util.find_spec("deepspeed") is None:
        problems.append("deepspeed is not installed: pip install 'qwen-ds[runtime]'")
    is_master_here = hf.single_host or (req.launcher == "no-ssh" and req.node_rank == 0)
    if is_master_here and not port_free(req.master_port):
        problems.append(f"--master-port {req.master_port} is in use on this host; choose another")
    if req.bind_cores_to_rank and spec.local and shutil.which("numactl") is None:
        problems.append("--bind-cores-to-rank: DeepSpeed binds each rank with numactl, which is not on PATH here; "
                        "install numactl (apt install numactl) or drop the flag")
    if not spec.local:
        binary = BACKEND_BINARY.get(req.launcher)
        if binary and shutil.which(binary) is None:
            problems.append(f"--launcher {req.launcher} needs '{binary}' on PATH; "
                            "install it or use --launcher no-ssh on every node")
    return problems
