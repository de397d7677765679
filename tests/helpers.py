"""Helpers several test modules share (pytest puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import io

from qwen_ds.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    """qwen_ds.cli.main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    rc = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return rc, out.getvalue(), err.getvalue()


def tiny_pair(out, zero: int, micro: int):
    """gen-config of tiny-qwen3 for a 2-slot localhost hostfile (written beside ``out``) with every knob pinned."""
    hf = out.parent / "hostfile"
    hf.write_text("localhost slots=2\n")
    rc, _, err = run_cli("gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hf), "--zero", str(zero),
                         "--micro-batch", str(micro), "--grad-accum", "1", "--checkpointing", "--offload-optimizer", "none",
                         "--offload-param", "none", "--tp", "1", "--pp", "1", "--seq-len", "32", "-o", str(out))
    assert rc == 0, err
    return out


def walk(value, path="$"):
    """(JSON path, value) of every node of a JSON document, depth first: $.a.b[0]."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, f"{path}[{i}]")
