"""The qwen-ds CLI: listings, estimate exit codes, one-line errors, and no heavy imports on light paths.

Exit codes and error lines go through ``qwen_ds.cli.main`` (which turns project errors into
``error: ...`` + exit 2), so those tests run ``python -m qwen_ds.cli`` in a subprocess.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from qwen_ds.cli import cli
from qwen_ds.hardware import gpu_names
from qwen_ds.models import preset_names

from helpers import run_cli

REPO = Path(__file__).resolve().parent.parent
EXIT_BAD_INPUT = 2
EXIT_DOES_NOT_FIT = 3


def qwen_ds(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "qwen_ds.cli", *args],
        capture_output=True, text=True, timeout=120, cwd=cwd or REPO, env=env,
    )


# --------------------------------------------------------------------------- listings


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def test_models_lists_every_preset(runner):
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    for name in preset_names():
        assert name in result.output
    assert "79,674,391,296" in result.output


def test_models_json(runner):
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == preset_names()
    by_name = {r["name"]: r for r in rows}
    nxt = by_name["Qwen3-Next-80B-A3B"]
    assert nxt["total_params"] == 79_674_391_296
    assert nxt["active_params"] == 3_874_929_408
    assert nxt["non_embedding_params"] == 79_052_061_440
    assert by_name["Qwen3-8B"]["hf_id"] == "Qwen/Qwen3-8B"


def test_gpus_lists_every_gpu(runner):
    result = runner.invoke(cli, ["gpus"])
    assert result.exit_code == 0, result.output
    for name in gpu_names():
        assert name in result.output


def test_gpus_json(runner):
    result = runner.invoke(cli, ["gpus", "--json"])
    assert result.exit_code == 0, result.output
    entries = json.loads(result.output)
    assert [e["name"] for e in entries] == gpu_names()
    for e in entries:
        assert e["memory_bytes"] > 0
        assert e["sources"]


def test_listings_via_subprocess():
    for args in (["models"], ["gpus"], ["models", "--json"], ["gpus", "--json"], ["--help"], ["--version"], ["estimate", "--help"]):
        proc = qwen_ds(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert len(json.loads(qwen_ds("models", "--json").stdout)) == len(preset_names())
    assert len(json.loads(qwen_ds("gpus", "--json").stdout)) == len(gpu_names())


def test_help_lists_commands():
    out = qwen_ds("--help").stdout
    for cmd in ("models", "gpus", "estimate"):
        assert cmd in out


# --------------------------------------------------------------------------- estimate exit codes

NEXT_2x8 = ["estimate", "--model", "Qwen3-Next-80B-A3B", "--gpu", "A100-80GB", "--nodes", "2", "--gpus-per-node", "8"]
TINY_1x1 = ["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--nodes", "1", "--gpus-per-node", "1"]


def test_estimate_fits_exit_0():
    proc = qwen_ds(*TINY_1x1)
    assert proc.returncode == 0, proc.stderr
    assert "FITS" in proc.stdout
    assert proc.stderr == ""


def test_estimate_does_not_fit_exit_3():
    proc = qwen_ds(*NEXT_2x8, "--zero", "3")
    assert proc.returncode == EXIT_DOES_NOT_FIT, proc.stderr
    assert "DOES NOT FIT" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_estimate_json_fits():
    proc = qwen_ds(*TINY_1x1, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    for key in ("gpu_total_bytes", "gpu_reserved_bytes", "cpu_total_bytes_per_node", "fits", "terms"):
        assert key in data
    assert data["fits"] is True
    assert data["total_params"] == 151_936
    assert isinstance(data["terms"], dict) and data["terms"]
    assert all(isinstance(v, int) and v >= 0 for v in data["terms"].values())
    assert data["gpu_total_bytes"] <= data["gpu_memory_bytes"]
    assert data["gpu_total_bytes"] >= data["gpu_reserved_bytes"] > 0


def test_estimate_json_does_not_fit():
    proc = qwen_ds(*NEXT_2x8, "--json")
    assert proc.returncode == EXIT_DOES_NOT_FIT, proc.stderr
    data = json.loads(proc.stdout)
    assert data["fits"] is False
    assert data["gpu_total_bytes"] > data["gpu_memory_bytes"]
    assert data["plan"]["zero_stage"] == 3
    assert data["plan"]["dp"] == 16
    assert data["total_params"] == 79_674_391_296
    for key in ("gpu_total_bytes", "gpu_reserved_bytes", "cpu_total_bytes_per_node", "fits", "terms"):
        assert key in data


def test_estimate_via_clirunner_exit_codes(runner):
    ok = runner.invoke(cli, [*TINY_1x1, "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["fits"] is True
    no = runner.invoke(cli, NEXT_2x8)
    assert no.exit_code == EXIT_DOES_NOT_FIT


# --------------------------------------------------------------------------- bad input: exit 2, one line


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    mal = root / "malformed" / "config.json"
    mal.parent.mkdir()
    mal.write_text('{\n  "model_type": "qwen3",\n  "hidden_size": 64,,\n}\n')
    empty = root / "no-config-dir"
    empty.mkdir()
    return {"malformed": str(mal), "empty_dir": str(empty)}


TINY_8 = ["--model", "tiny-qwen3", "--gpu", "A100-80GB"]

BAD_INPUTS = {
    "unknown model": (["estimate", "--model", "no-such-model", "--gpu", "A100-80GB"], "no-such-model"),
    "unknown gpu": (["estimate", "--model", "tiny-qwen3", "--gpu", "Z9000"], "Z9000"),
    "micro-batch 0": (["estimate", *TINY_8, "--micro-batch", "0"], "--micro-batch"),
    "seq-len -5": (["estimate", *TINY_8, "--seq-len", "-5"], "--seq-len"),
    "nodes 0": (["estimate", *TINY_8, "--nodes", "0"], "--nodes"),
    "gpus-per-node 0": (["estimate", *TINY_8, "--gpus-per-node", "0"], "--gpus-per-node"),
    "grad-accum 0": (["estimate", *TINY_8, "--grad-accum", "0"], "--grad-accum"),
    "new-tokens -1": (["estimate", *TINY_8, "--mode", "infer", "--new-tokens", "-1"], "--new-tokens"),
    "tp 3 on 8": (["estimate", *TINY_8, "--tp", "3"], "--tp 3"),
    "pp 64 over 48 layers": (["estimate", "--model", "Qwen3-Next-80B-A3B", "--gpu", "A100-80GB", "--nodes", "8",
                              "--gpus-per-node", "8", "--pp", "64", "--zero", "1"], "exceeds the 48 layers"),
    "tp 16 > gpus-per-node": (["estimate", *TINY_8, "--nodes", "2", "--tp", "16"], "--gpus-per-node"),
    "offload-param with zero 2": (["estimate", *TINY_8, "--offload-param", "cpu", "--zero", "2"], "--zero 3"),
    "offload-optimizer with zero 0": (["estimate", *TINY_8, "--offload-optimizer", "cpu", "--zero", "0"], "--offload-optimizer"),
    "pp 2 with zero 3": (["estimate", *TINY_8, "--pp", "2", "--zero", "3"], "--pp 2"),
    "bf16 on V100": (["estimate", "--model", "tiny-qwen3", "--gpu", "V100-32GB", "--precision", "bf16"], "fp16"),
    "fp8 on A100": (["estimate", *TINY_8, "--precision", "fp8"], "fp8"),
    "int8 training": (["estimate", *TINY_8, "--precision", "int8"], "--mode infer"),
}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == EXIT_BAD_INPUT, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exit_2_one_line(case):
    args, needle = BAD_INPUTS[case]
    assert_one_line_error(qwen_ds(*args), needle)


def test_bf16_on_v100_suggests_fp16():
    line = assert_one_line_error(qwen_ds("estimate", "--model", "tiny-qwen3", "--gpu", "V100-32GB", "--precision", "bf16"))
    assert "--precision fp16" in line


def test_default_precision_on_v100_is_fp16():
    proc = qwen_ds("estimate", "--model", "tiny-qwen3", "--gpu", "V100-32GB", "--gpus-per-node", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["plan"]["precision"] == "fp16"


def test_malformed_config_path(bad_files):
    line = assert_one_line_error(qwen_ds("estimate", "--model", bad_files["malformed"], "--gpu", "A100-80GB"))
    assert "line 3" in line
    assert bad_files["malformed"] in line


def test_directory_without_config_json(bad_files):
    line = assert_one_line_error(qwen_ds("estimate", "--model", bad_files["empty_dir"], "--gpu", "A100-80GB"))
    assert "config.json" in line


def test_missing_json_path(tmp_path):
    line = assert_one_line_error(qwen_ds("estimate", "--model", str(tmp_path / "absent.json"), "--gpu", "A100-80GB"))
    assert "absent.json" in line


def test_non_utf8_config_path(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'\xff\xfe{"model_type": "qwen3"}')
    assert_one_line_error(qwen_ds("estimate", "--model", str(path), "--gpu", "A100-80GB"), "config.json")


@pytest.mark.parametrize("args", [
    ["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--zero", "7"],
    ["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--micro-batch", "abc"],
    ["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--precision", "fp4"],
    ["estimate", "--gpu", "A100-80GB"],
    ["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--no-such-flag"],
    ["no-such-command"],
])
def test_click_usage_errors_exit_2(args):
    proc = qwen_ds(*args)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help)" in lines[0], proc.stderr


def test_main_in_process_error_line(capsys):
    from qwen_ds.cli import main

    with pytest.raises(SystemExit) as info:
        main(["estimate", "--model", "tiny-qwen3", "--gpu", "A100-80GB", "--tp", "3"])
    assert info.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: --tp 3") and err.count("\n") == 1


# --------------------------------------------------------------------------- no heavy imports on light paths

PROBE = textwrap.dedent("""
    import json, sys
    from qwen_ds.cli import main
    try:
        main(json.loads(sys.argv[1]))
        code = 0
    except SystemExit as exc:
        code = exc.code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "deepspeed", "transformers"})
    with open(sys.argv[2], "w") as fh:
        json.dump({"code": code, "heavy": heavy}, fh)
""")


@pytest.mark.parametrize("args, code", [
    ([*NEXT_2x8, "--json"], EXIT_DOES_NOT_FIT),
    ([*TINY_1x1], 0),
    (["--help"], 0),
    (["estimate", "--help"], 0),
    (["models"], 0),
    (["models", "--json"], 0),
    (["gpus"], 0),
    (["gpus", "--json"], 0),
])
def test_light_paths_do_not_import_torch(tmp_path, args, code):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["heavy"] == [], f"{args} imported {result['heavy']}"
    assert (result["code"] or 0) == code


@pytest.mark.runtime
def test_probe_detects_heavy_imports(tmp_path):
    """Positive control for the probe: a model_type without a closed form is counted through transformers."""
    pytest.importorskip("transformers")
    cfg = {"model_type": "mistral", "vocab_size": 500, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "probe.json"
    args = ["estimate", "--model", str(tmp_path / "config.json"), "--gpu", "A100-80GB", "--gpus-per-node", "1", "--json"]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["code"] in (0, None)
    assert "transformers" in result["heavy"] and "torch" in result["heavy"]


def test_plan_says_why_tp_is_not_considered_for_qwen3_next():
    p = qwen_ds("plan", "-m", "Qwen3-Next-80B-A3B", "-g", "A100-80GB", "--gpus-per-node", "8", "--mode", "infer",
                "--seq-len", "8192", "--new-tokens", "1024", "--micro-batch", "8")
    assert p.returncode == 0, p.stderr
    assert "not considered: --tp > 1 (DeepSpeed 0.19.8 AutoTP" in p.stdout
    assert " tp" not in p.stdout.split("rejected:")[0]  # no TP plan among the winners
    dense = qwen_ds("plan", "-m", "Qwen3-8B", "-g", "A100-80GB", "--gpus-per-node", "8", "--mode", "infer")
    assert dense.returncode == 0 and "not considered" not in dense.stdout


# --------------------------------------------------------------------------- float flags: NaN / inf / out of range

TINY_PLAN = ["--model", "tiny-qwen3", "--gpu", "A100-80GB", "--nodes", "2", "--gpus-per-node", "1"]
PLANNER_FLOATS = ["--headroom", "--cpu-mem-per-node", "--inter-node-gbps", "--compute-efficiency"]
FLOAT_FLAGS = {"plan": PLANNER_FLOATS, "gen-config": ["--lr", "--gradient-clipping", *PLANNER_FLOATS],
               "estimate": ["--cpu-mem-per-node"]}


def _float_cases() -> list:
    cases = []
    for command, flags in FLOAT_FLAGS.items():
        for flag in flags:
            for value in ("nan", "inf", "-inf"):
                cases.append(pytest.param(command, flag, value, id=f"{command}{flag}={value}"))
    extra = [("plan", "--compute-efficiency", "0"), ("plan", "--compute-efficiency", "1.5"), ("plan", "--inter-node-gbps", "0"),
             ("plan", "--inter-node-gbps", "-100"), ("plan", "--cpu-mem-per-node", "-4"), ("gen-config", "--lr", "0"),
             ("gen-config", "--gradient-clipping", "-1"), ("gen-config", "--warmup-steps", "-5"), ("gen-config", "--warmup-steps", "0"),
             ("gen-config", "--total-steps", "-5"), ("gen-config", "--total-steps", "50")]
    return cases + [pytest.param(c, f, v, id=f"{c}{f}={v}") for c, f, v in extra]


def test_float_flag_table_covers_every_float_flag():
    """Every type=float option of every command is in FLOAT_FLAGS (a new one must join the table)."""
    from qwen_ds.cli import COMMANDS

    found = {}
    for name, (module, _) in COMMANDS.items():
        cmd = importlib.import_module(module).command
        flags = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and isinstance(p.type, click.types.FloatParamType)]
        if flags:
            found[name] = sorted(flags)
    assert found == {k: sorted(v) for k, v in FLOAT_FLAGS.items()}


@pytest.mark.parametrize("command,flag,value", _float_cases())
def test_float_flags_refuse_nan_inf_and_out_of_range(tmp_path, command, flag, value):
    args = [command, *TINY_PLAN, flag, value]
    if command == "gen-config":
        args += ["-o", str(tmp_path / "out")]
    rc, out, err = run_cli(*args)
    assert rc == EXIT_BAD_INPUT, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {value}"), err
    assert "finite number" in lines[0] or "integer" in lines[0] or "fraction" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


def test_float_flags_in_range_still_work():
    rc, out, err = run_cli("plan", *TINY_PLAN, "--compute-efficiency", "1", "--inter-node-gbps", "0.5", "--cpu-mem-per-node", "0.5",
                           "--headroom", "1", "--json")
    assert rc == 0, err
    assert json.loads(out)["accepted"] > 0


# --------------------------------------------------------------------------- ambiguous GPU names


def in_process(*args: str) -> subprocess.CompletedProcess:
    """run_cli shaped like qwen_ds(): the same main(), without a child process."""
    rc, out, err = run_cli(*args)
    return subprocess.CompletedProcess(list(args), rc, out, err)


@pytest.mark.parametrize("name,candidates,why", [
    ("A100", "A100-40GB, A100-80GB", "memory differs"), ("v100", "V100-16GB, V100-32GB", "memory differs"),
    ("H100", "H100-SXM, H100-PCIe", "peak TFLOP/s and bandwidth differ"),
])
@pytest.mark.parametrize("command", ["estimate", "plan"])
def test_ambiguous_gpu_names_refused_with_candidates(command, name, candidates, why):
    line = assert_one_line_error(in_process(command, "--model", "tiny-qwen3", "--gpu", name, "--gpus-per-node", "1"))
    assert f"--gpu {name} is ambiguous: {candidates} ({why}); pick one" in line


@pytest.mark.parametrize("name,entry", [("A100-80GB", "A100-80GB"), ("a100-40g", "A100-40GB"), ("V100-32GB", "V100-32GB"),
                                        ("H100-SXM", "H100-SXM"), ("h100-pcie", "H100-PCIe"), ("A10", "A10"), ("H200", "H200"),
                                        ("NVIDIA H100 80GB HBM3", "H100-SXM")])
def test_exact_and_unambiguous_gpu_names_still_work(name, entry):
    from qwen_ds.hardware import get_gpu

    assert get_gpu(name).name == entry


def test_validate_refuses_an_ambiguous_gpu(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 1}))
    assert_one_line_error(in_process("validate", str(path), "--gpu", "A100"), "--gpu A100 is ambiguous")
