"""qwen_ds/validate/ds_signatures.py is data written by hand so that validate never imports torch or
deepspeed: every entry must equal what the installed DeepSpeed and torch really accept."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

from qwen_ds.validate import ds_signatures as sig

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")


def _load(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _kwargs(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) keyword arguments after the first (the params / the optimizer)."""
    params = list(inspect.signature(cls).parameters.values())[1:]
    return (tuple(p.name for p in params if p.default is inspect.Parameter.empty),
            tuple(p.name for p in params if p.default is not inspect.Parameter.empty))


@pytest.mark.parametrize("path", sorted(sig.OPTIMIZER_KWARGS))
def test_optimizer_kwargs_match_the_real_class(path):
    required, optional = _kwargs(_load(path))
    assert required == ()
    assert set(sig.OPTIMIZER_KWARGS[path]) == set(optional)


@pytest.mark.parametrize("path", sorted(sig.SCHEDULER_KWARGS))
def test_scheduler_kwargs_match_the_real_class(path):
    required, optional = sig.SCHEDULER_KWARGS[path]
    assert _kwargs(_load(path)) == (required, optional)


def test_deepspeed_optimizer_names():
    from deepspeed.runtime.config import ADAM_W_MODE, DEEPSPEED_OPTIMIZERS, TORCH_ADAM_PARAM

    assert set(sig.DEEPSPEED_OPTIMIZERS) == set(DEEPSPEED_OPTIMIZERS)
    assert all(k == v.lower() for k, v in sig.DEEPSPEED_OPTIMIZERS.items())
    assert {ADAM_W_MODE, TORCH_ADAM_PARAM} <= sig.ADAM_CONFIG_KEYS


def test_every_torch_optimizer_listed():
    real = {n for n, c in vars(torch.optim).items()
            if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}
    assert set(sig.torch_optimizers()) == real


def test_every_scheduler_listed():
    from deepspeed.runtime.lr_schedules import VALID_LR_SCHEDULES
    from torch.optim import lr_scheduler

    ours = {sig.short(p) for p in sig.SCHEDULER_KWARGS if p.startswith("deepspeed.")}
    assert ours == set(VALID_LR_SCHEDULES)
    real = {n for n, c in vars(lr_scheduler).items() if inspect.isclass(c) and issubclass(c, (lr_scheduler.LRScheduler,
            lr_scheduler.ReduceLROnPlateau)) and not n.startswith("_") and n != "LRScheduler"}
    torch_ours = {sig.short(p) for p in sig.SCHEDULER_KWARGS if p.startswith("torch.")}
    assert torch_ours | set(sig.SCHEDULERS_NEEDING_OBJECTS) == real
    assert not torch_ours & set(sig.SCHEDULERS_NEEDING_OBJECTS)


@pytest.mark.parametrize("name", sig.POSITIVE_WARMUP)
def test_warmup_schedulers_refuse_zero_steps(name):
    from deepspeed.runtime import lr_schedules

    cls = getattr(lr_schedules, name)
    total = {"total_num_steps": 10} if "total_num_steps" in sig.SCHEDULER_KWARGS[f"deepspeed.runtime.lr_schedules.{name}"][0] else {}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="warmup_num_steps must be a positive integer"):
        cls(opt, warmup_num_steps=0, **total)
    cls(opt, warmup_num_steps=1, **total)


def test_validate_imports_neither_torch_nor_deepspeed():
    code = ("import sys, json; from qwen_ds.validate import validate_config, Context; "
            "validate_config({'train_micro_batch_size_per_gpu': 1, 'optimizer': {'type': 'AdamWW'}}, Context()); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed'})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out) == []
