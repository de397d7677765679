"""Issue #11 §4: inputs are bounded and checks are linear, so no config file can hang qwen-ds or
exhaust memory. Each case hung, ran for minutes, or died with a traceback before.

The CLI runs in a child process under a memory cap and a generous timeout: both are only guards
that turn the old behaviour (reading /dev/zero forever, blocking on a FIFO) into a failure instead
of a stuck test run; nothing here asserts a duration."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HANG_GUARD_S = 120
MEMORY_CAP = 2 * 2**30
SIZE = ["--gpu", "H100-SXM"]
TINY = {"model_type": "qwen3", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True}


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def qwen_ds(*args: str, cwd: Path) -> tuple[int, str]:
    """`qwen-ds ARGS` in a child process: (exit code, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, preexec_fn=_cap_memory)
    return proc.returncode, proc.stderr


def one_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_key_among_100k_keys(tmp_path):
    """The check was list.count per key: 100k keys took minutes (killed here by the hang guard)."""
    body = ",\n".join(f'"k{i}": {i}' for i in range(100_000))
    (tmp_path / "ds.json").write_text('{"train_batch_size": 8,\n' + body + ',\n"k77": 1}\n')
    msg = one_error(*qwen_ds("validate", "ds.json", "--no-deepspeed", cwd=tmp_path))
    assert "duplicate keys k77 " in msg


def test_big_non_json_config_is_not_parsed_as_hjson(tmp_path):
    """hjson is pure Python (16 s for 10 MB): past 1 MiB the JSON error is the answer."""
    (tmp_path / "ds.json").write_text('{"train_batch_size": 8, "pad": [' + "1," * 2**20 + "]}")
    msg = one_error(*qwen_ds("validate", "ds.json", "--no-deepspeed", cwd=tmp_path))
    assert "ds.json line 1: malformed JSON" in msg and "hjson" in msg and "only up to 1 MiB" in msg


def test_many_duplicate_keys_stay_a_short_line(tmp_path):
    body = ",".join(f'"k{i}": 1, "k{i}": 2' for i in range(5_000))
    (tmp_path / "ds.json").write_text("{" + body + "}")
    msg = one_error(*qwen_ds("validate", "ds.json", "--no-deepspeed", cwd=tmp_path))
    assert "duplicate keys k0, k1, k10, " in msg and "(5000 in all)" in msg
    assert len(msg) < 400


# --------------------------------------------------------------------------- what a config read accepts


@pytest.mark.parametrize("argv, what", [
    (["validate", "/dev/zero", "--no-deepspeed"], "DeepSpeed config /dev/zero: a character device"),
    (["estimate", "-m", "/dev/zero", *SIZE], "model config /dev/zero: a character device"),
])
def test_dev_zero_is_refused_before_reading(tmp_path, argv, what):
    """Read to the end before: a MemoryError traceback once memory ran out."""
    msg = one_error(*qwen_ds(*argv, cwd=tmp_path))
    assert what in msg and "not a regular file" in msg


def test_fifo_is_refused_without_blocking(tmp_path):
    """open() of a FIFO without a writer blocked forever before."""
    os.mkfifo(tmp_path / "ds.json")
    msg = one_error(*qwen_ds("validate", "ds.json", "--no-deepspeed", cwd=tmp_path))
    assert "DeepSpeed config ds.json: a pipe, not a regular file" in msg


@pytest.mark.parametrize("argv, what", [
    (["validate", "big.json", "--no-deepspeed"], "DeepSpeed config big.json"),
    (["estimate", "-m", "big.json", *SIZE], "model config big.json"),
])
def test_config_over_64_mib_is_refused(tmp_path, argv, what):
    """100 MB configs were parsed whole before (tens of seconds, ~1 GB). A sparse file: no disk used."""
    with open(tmp_path / "big.json", "wb") as fh:
        fh.truncate(100 * 2**20)
    msg = one_error(*qwen_ds(*argv, cwd=tmp_path))
    assert f"{what}: 100.0 MiB is over the 64 MiB limit for a config file" in msg


def test_read_stops_at_the_limit_when_the_size_is_unknown():
    """/proc files report size 0: the read itself must stop, not trust st_size."""
    from qwen_ds.errors import InputError
    from qwen_ds.fileio import CONFIG_LIMIT, read_text

    assert os.stat("/proc/self/status").st_size == 0
    assert "Name:" in read_text("/proc/self/status", "probe", "fix", limit=CONFIG_LIMIT)
    with pytest.raises(InputError, match=r"^probe /proc/self/status: more than the 16 B limit for a config file; fix$"):
        read_text("/proc/self/status", "probe", "fix", limit=16)


# --------------------------------------------------------------------------- model bounds and --model ""


@pytest.mark.parametrize("layers", [30_000, 10_000_000, 10**12])
def test_absurd_layer_counts_are_refused(tmp_path, layers):
    """3e4 layers took 40 s, 1e7 never finished, 1e12 was a MemoryError traceback."""
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY, num_hidden_layers=layers)))
    msg = one_error(*qwen_ds("estimate", "-m", "config.json", *SIZE, cwd=tmp_path))
    assert f"config.json: 'num_hidden_layers' = {layers:,} is over the 10,000 qwen-ds accepts" in msg


@pytest.mark.parametrize("given", ["", " ", "\t"])
def test_empty_model_is_exit_2(tmp_path, given):
    """-m "" (an unset $MODEL) silently sized tiny-qwen3: its hf_id "" matched."""
    msg = one_error(*qwen_ds("estimate", "-m", given, *SIZE, cwd=tmp_path))
    assert ": empty; give a preset name (qwen-ds models)" in msg
