"""DeepSpeed's own config parsing (when deepspeed is importable), with the intended world size.

DeepSpeedConfig falls back to world size 1 without a process group (reference/deepspeed.md §2,
caveat 1), so get_rank / get_world_size are patched to the data-parallel world; DS_ACCELERATOR=cuda
makes GPU-only paths (aio.use_gds) parse on a CPU host. Errors come back as Problems.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any

from ..errors import one_line
from .problems import Problem


def deepspeed_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def deepspeed_problems(cfg: dict[str, Any], world_size: int, inference: bool) -> list[Problem]:
    sink = io.StringIO()
    old = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cuda"
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            import logging

            logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
            if inference:
                from deepspeed.inference.config import DeepSpeedInferenceConfig

                DeepSpeedInferenceConfig(**cfg)
            else:
                from unittest import mock

                import deepspeed.comm as dist
                from deepspeed.runtime.config import DeepSpeedConfig

                with mock.patch.object(dist, "get_rank", return_value=0), \
                        mock.patch.object(dist, "get_world_size", return_value=world_size):
                    DeepSpeedConfig(dict(cfg))
    except Exception as exc:  # DeepSpeed raises AssertionError, ValueError, ValidationError, DeepSpeedConfigError,
        # TypeError
        return [Problem("$", f"DeepSpeed's own parser refuses it: {type(exc).__name__}: {one_line(exc)[:400]}",
                        "deepspeed")]
    finally:
        if old is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = old
    return []


def deepspeed_problems_subprocess(cfg: dict[str, Any], world_size: int, inference: bool,
                                  timeout: float = 180) -> list[Problem]:
    """Run deepspeed_problems in a child process: validate itself never imports torch/deepspeed."""
    import json
    import subprocess
    import sys

    payload = json.dumps({"cfg": cfg, "world_size": world_size, "inference": inference})
    try:
        proc = subprocess.run([sys.executable, "-m", "qwen_ds.validate.dscheck"], input=payload, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [Problem("$", f"DeepSpeed's parser did not answer within {timeout:.0f} s; rerun with --no-deepspeed",
                        "deepspeed", "warning")]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("QWEN_DS_PROBLEMS=")]
    if proc.returncode != 0 or not lines:
        tail = one_line(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        return [Problem("$", f"could not run DeepSpeed's parser ({tail[:200]}); rerun with --no-deepspeed", "deepspeed",
                        "warning")]
    return [Problem(**p) for p in json.loads(lines[-1].split("=", 1)[1])]


def _main() -> None:
    import json
    import sys

    req = json.loads(sys.stdin.read())
    found = deepspeed_problems(req["cfg"], req["world_size"], req["inference"])
    print("QWEN_DS_PROBLEMS=" + json.dumps([p.as_dict() for p in found]))


if __name__ == "__main__":
    _main()
