"""Property-based fuzzing of validate: arbitrary text and arbitrary JSON-like configs never crash it.

(1) text -> parse_config_text -> validate_config raises nothing but InputError;
(2) nested dicts with schema keys, sub-block keys and random keys -> validate_config returns Problems;
(3) the `qwen-ds validate` CLI on such files exits 0, 2 or 3 without a traceback.

Inputs that once crashed are pinned below with the exact input (test_known_*).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from qwen_ds.errors import InputError
from qwen_ds.hardware import get_gpu, gpu_names
from qwen_ds.models import load_model
from qwen_ds.validate import Context, Problem, validate_config
from qwen_ds.validate.parse import parse_config_text
from qwen_ds.validate.schema import schema

REPO = Path(__file__).resolve().parent.parent

IN_PROCESS = settings(deadline=None, max_examples=300, derandomize=True, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _schema_keys() -> tuple[list[str], list[str]]:
    s = schema()
    top = sorted(s["properties"])
    sub = sorted({k for d in s["$defs"].values() for k in d.get("properties", {})})
    return top, sub


TOP_KEYS, SUB_KEYS = _schema_keys()
BATCH_KEYS = ["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"]
BLOCK_KEYS = ["zero_optimization", "bf16", "fp16", "optimizer", "tensor_parallel", "pipeline", "offload_param", "offload_optimizer"]
# one_of picks a branch uniformly: repeating a branch weights it
KEYS = st.one_of(st.sampled_from(TOP_KEYS), st.sampled_from(TOP_KEYS), st.sampled_from(SUB_KEYS), st.sampled_from(SUB_KEYS),
                 st.text(max_size=12))

SCALARS_FINITE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-3, max_value=64),
    st.floats(allow_nan=False, allow_infinity=False), st.just("auto"), st.booleans(), st.none(),
    st.sampled_from(["cpu", "nvme", "none", "bf16", "fp16", "fp32", "int8", "AdamW", "SGD", "mean", "sum"]), st.text(max_size=8),
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
SCALARS_ALL = st.one_of(SCALARS_FINITE, st.floats(), NON_FINITE, NON_FINITE)


def configs(scalars) -> st.SearchStrategy:
    """Random nested dicts merged over a config-shaped skeleton (batch keys, known blocks keyed by sub-block keys)."""
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=6)),
                          max_leaves=25)
    block = st.dictionaries(st.one_of(st.sampled_from(SUB_KEYS), st.sampled_from(SUB_KEYS), st.text(max_size=8)),
                            st.one_of(scalars, scalars, values), max_size=8)
    skeleton = st.fixed_dictionaries({}, optional={**{k: st.one_of(scalars, st.integers(0, 64)) for k in BATCH_KEYS},
                                                   **{k: st.one_of(block, block, values) for k in BLOCK_KEYS}})
    noise = st.dictionaries(KEYS, st.one_of(scalars, values), max_size=6)
    return st.builds(lambda a, b: {**b, **a}, skeleton, noise)


CONTEXTS = st.builds(
    Context,
    world_size=st.one_of(st.none(), st.integers(1, 64)),
    gpus_per_node=st.one_of(st.none(), st.integers(1, 8)),
    pp=st.integers(1, 4),
    gpu=st.one_of(st.none(), st.sampled_from(gpu_names()).map(get_gpu)),
    model=st.one_of(st.none(), st.sampled_from(["Qwen3-8B", "tiny-qwen3", "Qwen3-Next-80B-A3B"]).map(load_model)),
)

TOKENS = list('{}[]":,0123456789eE.-+ \n\t/#*truefalsnNaIiy') + ['"auto"', '"stage"', '"bf16"', "//", "/*", "*/", "\\", "'''"]
JSONISH_TEXT = st.one_of(
    st.text(),
    st.lists(st.sampled_from(TOKENS), max_size=120).map("".join),
    configs(SCALARS_FINITE).map(lambda c: json.dumps(c, indent=1)),
    configs(SCALARS_FINITE).map(lambda c: json.dumps(c)[:-1]),  # truncated
)


def _check(problems) -> None:
    assert isinstance(problems, list)
    for p in problems:
        assert isinstance(p, Problem)
        assert p.path.startswith("$") and p.message and p.rule and p.severity in ("error", "warning")
        json.dumps(p.as_dict())


# --------------------------------------------------------------------------- (1) text


@IN_PROCESS
@given(text=JSONISH_TEXT, ctx=CONTEXTS)
def test_text_raises_nothing_but_input_error(text, ctx):
    try:
        cfg = parse_config_text(text, "fuzz.json")
    except InputError:
        return
    assert isinstance(cfg, dict)
    _check(validate_config(cfg, ctx))


# --------------------------------------------------------------------------- (2) nested dicts


@IN_PROCESS
@given(cfg=configs(SCALARS_FINITE), ctx=CONTEXTS)
def test_nested_dicts_give_problems_never_raise(cfg, ctx):
    _check(validate_config(cfg, ctx))


@IN_PROCESS
@given(cfg=configs(SCALARS_FINITE), ctx=CONTEXTS)
def test_nested_dicts_through_json_text(cfg, ctx):
    """The same configs written out and read back (hjson-free JSON path) behave the same."""
    back = parse_config_text(json.dumps(cfg), "fuzz.json")
    _check(validate_config(back, ctx))


@IN_PROCESS
@given(cfg=configs(SCALARS_ALL), ctx=CONTEXTS)
def test_nested_dicts_with_nan_and_inf_never_raise(cfg, ctx):
    _check(validate_config(cfg, ctx))


@pytest.mark.parametrize("cfg", [
    {"train_batch_size": math.nan},
    {"train_micro_batch_size_per_gpu": math.inf},
    {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3, "reduce_bucket_size": -math.inf}},
    {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": math.nan}},
], ids=["tbs-nan", "mbs-inf", "bucket-neg-inf", "stage-nan"])
def test_known_crashes_in_process(cfg):
    _check(validate_config(cfg, Context()))


@pytest.mark.parametrize("text", [
    "[" * 100_000,
    '{"a":' * 100_000,
    '{"train_batch_size": ' + "1" * 5000 + "}",
], ids=["deep-list", "deep-object", "int-5000-digits"])
def test_known_parser_crashes(text):
    with pytest.raises(InputError):
        parse_config_text(text, "fuzz.json")


def test_non_finite_values_in_float_fields_are_fine():
    for v in (math.nan, math.inf, -math.inf):
        _check(validate_config({"train_micro_batch_size_per_gpu": 1, "gradient_clipping": v}, Context(world_size=8)))


# --------------------------------------------------------------------------- (3) the CLI on such files

CLI_DRIVER = """\
import sys
from qwen_ds.cli import main
main(sys.argv[1:])
"""


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-c", CLI_DRIVER, "validate", str(path), "--no-deepspeed", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


@settings(deadline=None, max_examples=8, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cfg=configs(SCALARS_FINITE), model_gpu=st.booleans(), shape=st.booleans(), as_json=st.booleans())
def test_cli_exits_0_2_or_3_without_traceback(tmp_path, cfg, model_gpu, shape, as_json):
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(cfg))
    args = []
    if model_gpu:
        args += ["--model", "Qwen3-8B", "--gpu", "H100-SXM"]
    if shape:
        args += ["--nodes", "2", "--gpus-per-node", "8"]
    if as_json:
        args.append("--json")
    proc = _cli(path, *args)
    assert proc.returncode in (0, 2, 3), proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    if as_json and proc.stdout.strip():  # an unreadable file gives only the one-line error on stderr
        doc = json.loads(proc.stdout)
        assert doc["ok"] is (proc.returncode == 0)


@pytest.mark.parametrize("text,args", [
    ('{"train_batch_size": NaN}', []),
    ('{"train_micro_batch_size_per_gpu": 1e300}', ["--model", "Qwen3-8B", "--gpu", "H100-SXM"]),
], ids=["nan-batch", "huge-micro-batch-memory-verdict"])
def test_cli_known_tracebacks(tmp_path, text, args):
    path = tmp_path / "bad.json"
    path.write_text(text)
    proc = _cli(path, *args)
    assert proc.returncode in (0, 2, 3) and "Traceback" not in proc.stderr, proc.stderr[-500:]
