"""`qwen-ds doctor`: the topology parser on captured `nvidia-smi topo -m` outputs, GPU query parsing and
catalog mapping, limit / environment / version advice, and the real command on this machine (no GPU
needed: it must exit 0 and say what it could not see)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from qwen_ds import doctor
from qwen_ds.cli import cli
from qwen_ds.doctor import (
    SECTIONS,
    CmdResult,
    analyse_topology,
    classify_link,
    collect,
    env_advice,
    env_context_advice,
    limits_advice,
    parse_gpu_query,
    parse_topology,
    ranges,
    run_cmd,
    versions_advice,
)
from qwen_ds.hardware import match_catalog

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def topo(name: str) -> dict:
    return parse_topology((FIXTURES / f"topo_{name}.txt").read_text())


def messages(advice: list[dict], level: str | None = None) -> str:
    return "\n".join(a["message"] for a in advice if level is None or a["level"] == level)


# --------------------------------------------------------------------------- topology parser


def test_classify_link():
    assert classify_link("NV18") == ("nvlink", 18)
    assert classify_link(" X ") == ("self", 0)
    assert [classify_link(v)[0] for v in ("PIX", "PXB", "PHB", "NODE", "SYS", "SOC", "N/A")] == \
        ["pcie", "pcie", "pcie", "node", "sys", "sys", "unknown"]


def test_dgx_h100_all_nv18():
    t = topo("dgx_h100")  # header carries the ANSI underline nvidia-smi prints
    assert t["gpus"] == list(range(8))
    assert t["columns"][8:] == ["NIC0", "NIC1", "NIC2", "NIC3"]
    assert t["nics"] == {f"NIC{i}": f"mlx5_{i}" for i in range(4)}
    assert t["links"]["GPU0"]["GPU7"] == "NV18" and t["links"]["GPU0"]["NIC0"] == "PIX"
    assert t["links"]["NIC3"]["GPU6"] == "PIX"
    assert t["affinity"]["GPU0"] == {"cpu": "0-55,112-167", "numa": "0", "gpu_numa_id": "N/A"}
    assert t["affinity"]["GPU5"]["numa"] == "1"
    a = analyse_topology(t)
    assert a["pairs"]["nvlink"] == 28 and a["pairs"]["sys"] == 0
    assert a["nvlink_domains"] == [{"gpus": list(range(8)), "size": 8, "full_mesh": True, "min_nvlinks": 18, "max_nvlinks": 18}]
    assert a["max_tp_on_nvlink"] == 8
    assert a["matrix"][0] == ["X"] + ["NV18"] * 7
    assert [x["level"] for x in a["advice"]] == ["ok"]
    assert "hpZ = 8" in a["advice"][0]["message"]


def test_pcie_only_box():
    t = topo("pcie_4gpu")
    assert t["gpus"] == [0, 1, 2, 3]
    assert "NIC0" in t["links"] and t["links"]["NIC0"]["GPU0"] == "PHB"
    a = analyse_topology(t)
    assert a["pairs"] == {"nvlink": 0, "pcie": 1, "node": 1, "sys": 4, "unknown": 0}
    assert all(d["size"] == 1 for d in a["nvlink_domains"])
    assert a["max_tp_on_nvlink"] == 1
    assert a["socket_groups"] == [[0, 1], [2, 3]]
    assert a["numa"] == {"0": "0", "1": "0", "2": "1", "3": "1"}
    text = messages(a["advice"])
    assert "No NVLink" in text and "TP = 1" in text
    assert "0-1 / 2-3" in text and "NCCL_SHM_DISABLE" in text


def test_two_nvlink_islands():
    a = analyse_topology(topo("2x4_islands"))
    assert [d["gpus"] for d in a["nvlink_domains"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(d["full_mesh"] and d["min_nvlinks"] == 4 for d in a["nvlink_domains"])
    assert a["max_tp_on_nvlink"] == 4
    warn = messages(a["advice"], "warn")
    assert "GPUs 0-3 and 4-7 are only connected through" in warn and "(SYS)" in warn
    assert "TP <= 4" in warn and "hpZ = 4" in warn


def test_hybrid_cube_mesh_is_one_domain_but_not_all_to_all():
    t = topo("dgx1_cubemesh")  # old layout: mlx5_N columns, CPU Affinity only
    assert t["columns"][-2:] == ["mlx5_0", "mlx5_1"]
    assert t["affinity"]["GPU4"] == {"cpu": "20-39,60-79"}
    a = analyse_topology(t)
    assert len(a["nvlink_domains"]) == 1 and not a["nvlink_domains"][0]["full_mesh"]
    assert (a["nvlink_domains"][0]["min_nvlinks"], a["nvlink_domains"][0]["max_nvlinks"]) == (1, 2)
    assert a["max_tp_on_nvlink"] == 4
    assert "not all-to-all" in messages(a["advice"], "warn")


def test_real_capture_h200_pair():
    # captured verbatim from `nvidia-smi topo -m` on a 2x H200 host (driver 580.159.04)
    t = topo("h200_2gpu_captured")
    assert t["columns"] == ["GPU0", "GPU1"] and t["gpus"] == [0, 1]
    assert t["affinity"]["GPU1"] == {"cpu": "0-31", "numa": "0", "gpu_numa_id": "N/A"}
    a = analyse_topology(t)
    assert a["matrix"] == [["X", "NV18"], ["NV18", "X"]] and a["max_tp_on_nvlink"] == 2
    assert a["advice"][0]["message"].startswith("Both GPUs are NVLink all-to-all (NV18)")
    devs = doctor.describe_gpus(parse_gpu_query("0, NVIDIA H200, 143771, 9.0, 580.159.04\n"))
    assert (devs[0]["catalog"], devs[0]["catalog_match"], devs[0]["fp8"]) == ("H200", "exact", True)


def test_single_gpu_spaces_instead_of_tabs():
    t = parse_topology("        GPU0    CPU Affinity    NUMA Affinity\nGPU0     X      0-15            0\n\nLegend:\n  X = Self\n")
    assert t["gpus"] == [0] and t["affinity"]["GPU0"] == {"cpu": "0-15", "numa": "0"}
    a = analyse_topology(t)
    assert a["advice"] == [] and a["max_tp_on_nvlink"] == 1


@pytest.mark.parametrize("text", ["", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
                                  "\tGPU0\tGPU1\n"])
def test_no_matrix_raises(text):
    with pytest.raises(ValueError):
        parse_topology(text)


def test_ranges():
    assert ranges([3, 0, 1, 2, 6]) == "0-3,6"
    assert ranges([5]) == "5"


# --------------------------------------------------------------------------- GPU query and catalog


def test_gpu_query_and_catalog():
    rows = parse_gpu_query("0, NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n"
                           "1, NVIDIA A100 80GB PCIe, 81920, 8.0, 550.54.15\n"
                           "2, Tesla V100-SXM2-32GB, 32768, [N/A], 550.54.15\n")
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0] == {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "compute_capability": "9.0",
                       "driver": "550.54.15"}
    assert rows[2]["compute_capability"] is None
    devs = doctor.describe_gpus(rows)
    assert [(d["catalog"], d["catalog_match"]) for d in devs] == [("H100-SXM", "exact"), ("A100-80GB", "closest"),
                                                                   ("V100-32GB", "exact")]
    assert [(d["bf16"], d["fp8"]) for d in devs] == [(True, True), (True, False), (False, False)]
    assert devs[2]["compute_capability"] == "7.0"  # from the catalog when nvidia-smi has no compute_cap


def test_catalog_no_match_and_units():
    assert match_catalog("NVIDIA H100 NVL", 95830) == (None, None)  # 94 GB: not the 80 GB catalog entries
    assert match_catalog("NVIDIA H100 PCIe", 81559) == ("H100-PCIe", "exact")
    assert parse_gpu_query("0, NVIDIA L40S, 46068 MiB, 8.9, 550\n")[0]["memory_mib"] == 46068


# --------------------------------------------------------------------------- running commands


def test_run_cmd_failures_are_one_line():
    assert run_cmd(["qwen-ds-no-such-tool-xyz"]).error == "qwen-ds-no-such-tool-xyz: not found"
    slow = run_cmd([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)
    assert not slow.ok and "timed out after 0.5 s" in slow.error
    bad = run_cmd([sys.executable, "-c", "import sys; sys.stderr.write('boom\\nmore\\n'); sys.exit(3)"])
    assert not bad.ok and bad.error.endswith("exit 3: boom")


def fake_runner(outputs: dict[str, str] | None = None):
    """nvidia-smi answers from ``outputs`` (keyed by its first argument); everything else is not found."""
    def run(argv: list[str]) -> CmdResult:
        if outputs is None or argv[0] != "nvidia-smi":
            return CmdResult(False, "", f"{argv[0]}: not found")
        key = "topo" if argv[1] == "topo" else "query"
        return CmdResult(True, outputs[key])
    return run


def no_torch(devices: bool = False) -> dict:
    return {"installed": None, "imported": False, "error": None, "cuda": None, "hip": None, "cuda_available": False,
            "device_count": 0, "nccl": None, "devices": []}


def test_collect_without_gpu_or_torch(tmp_path):
    report = collect(run=fake_runner(None), env={}, probe=no_torch, which=lambda n: None, home=tmp_path, cwd=tmp_path)
    assert tuple(report) == SECTIONS
    assert report["gpus"]["nvidia_smi_error"] == "nvidia-smi: not found" and report["gpus"]["devices"] == []
    assert report["topology"]["error"] == "nvidia-smi: not found"
    assert report["versions"]["torch"]["version"] is None
    assert report["versions"]["NVIDIA driver"]["detail"] == "nvidia-smi: not found"
    text = messages(report["advice"])
    assert "torch is not installed" in text and "nvidia-smi: not found" in text
    json.dumps(report)


def test_collect_dgx_h100_with_fake_nvidia_smi(tmp_path):
    query = "".join(f"{i}, NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n" for i in range(8))
    outputs = {"query": query, "topo": (FIXTURES / "topo_dgx_h100.txt").read_text()}
    report = collect(run=fake_runner(outputs), env={}, probe=no_torch, which=lambda n: None, home=tmp_path, cwd=tmp_path)
    g = report["gpus"]
    assert g["count"] == 8 and g["driver"] == "550.54.15" and g["source"] == "nvidia-smi"
    assert {d["catalog"] for d in g["devices"]} == {"H100-SXM"}
    assert report["versions"]["NVIDIA driver"]["version"] == "550.54.15"
    assert report["topology"]["max_tp_on_nvlink"] == 8
    assert any(a["section"] == "topology" and a["level"] == "ok" for a in report["advice"])


def test_collect_survives_a_crashing_probe(tmp_path):
    def boom(devices: bool = False) -> dict:
        raise RuntimeError("CUDA driver exploded")
    report = collect(run=fake_runner(None), env={}, probe=boom, which=lambda n: None, home=tmp_path, cwd=tmp_path)
    assert "CUDA driver exploded" in report["gpus"]["error"]
    assert tuple(report) == SECTIONS


# --------------------------------------------------------------------------- limits


def test_limits_advice():
    small = {"memlock": {"soft_bytes": 64 * 1024, "hard_bytes": 64 * 1024}, "nofile": {"soft": 1024, "hard": 1048576},
             "shm": {"path": "/dev/shm", "total_bytes": 64 * 1024**2, "free_bytes": 64 * 1024**2},
             "ram": {"total_bytes": 512 * 1024**3, "cgroup_limit_bytes": 64 * 1024**3}}
    adv = limits_advice(small)
    text = messages(adv, "warn")
    assert "ulimit -l unlimited" in text and "0.19.5" in text
    assert "ulimit -n 65536" in text
    assert "--shm-size" in text and "--ipc=host" in text and "NCCL_SHM_DISABLE=1" in text
    assert "container memory limit" in messages(adv, "info")
    ok = {"memlock": {"soft_bytes": None, "hard_bytes": None}, "nofile": {"soft": 1048576, "hard": 1048576},
          "shm": {"path": "/dev/shm", "total_bytes": 64 * 1024**3}, "ram": {}}
    assert limits_advice(ok) == []
    assert "need /dev/shm" in messages(limits_advice({"shm": {"path": "/dev/shm", "error": "/dev/shm: No such file"}}))


def test_limits_reads_this_machine():
    lim = doctor.limits()
    assert lim["cpus"]["logical"] >= 1
    assert "memlock" in lim and "nofile" in lim and "shm" in lim


# --------------------------------------------------------------------------- environment


def test_seed_advice_warnings():
    adv = env_advice({"NCCL_SHM_DISABLE": "1", "NCCL_BLOCKING_WAIT": "1"})
    warn = messages(adv, "warn")
    assert "NCCL_SHM_DISABLE=1" in warn and "not a timeout fix" in warn and "--shm-size" in warn
    assert "NCCL_BLOCKING_WAIT=1" in warn and "TORCH_NCCL_BLOCKING_WAIT" in warn and "does not lengthen" in warn
    assert env_advice({"NCCL_SHM_DISABLE": "0", "NCCL_DEBUG": "INFO"}) == []
    info = messages(env_advice({"TORCH_NCCL_BLOCKING_WAIT": "1", "NCCL_ASYNC_ERROR_HANDLING": "1"}), "info")
    assert "raise on timeout" in info and "TORCH_NCCL_ASYNC_ERROR_HANDLING" in info
    assert "NVLink" in messages(env_advice({"NCCL_P2P_DISABLE": "1"}), "warn")


def test_gpu_less_launch_host_does_not_forward_nccl():
    adv = env_context_advice({"NCCL_SOCKET_IFNAME": "ib0"}, gpu_count=0, ds_files=[])
    assert "DS_ACCELERATOR=cuda" in messages(adv, "warn")
    assert env_context_advice({"NCCL_SOCKET_IFNAME": "ib0", "DS_ACCELERATOR": "cuda"}, gpu_count=0, ds_files=[]) == []
    assert "--include localhost" in messages(env_context_advice({"CUDA_VISIBLE_DEVICES": "0,1"}, 2, []))


def test_env_warnings_trip_with_monkeypatched_env(monkeypatch):
    monkeypatch.setenv("NCCL_SHM_DISABLE", "1")
    monkeypatch.setenv("NCCL_BLOCKING_WAIT", "1")
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    result = CliRunner().invoke(cli, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    env_set = report["environment"]["set"]
    assert env_set["NCCL_SHM_DISABLE"] == "1" and env_set["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    warn = messages([a for a in report["advice"] if a["section"] == "environment"], "warn")
    assert "NCCL_SHM_DISABLE=1" in warn and "NCCL_BLOCKING_WAIT=1" in warn


def test_deepspeed_env_file_is_checked(tmp_path):
    (tmp_path / ".deepspeed_env").write_text("NCCL_SHM_DISABLE=1\n\nNCCL_DEBUG=INFO\n")
    home = tmp_path / "home"
    home.mkdir()
    report = collect(run=fake_runner(None), env={}, probe=no_torch, which=lambda n: None, home=home, cwd=tmp_path)
    files = report["environment"]["deepspeed_env_files"]
    assert len(files) == 1 and files[0]["vars"]["NCCL_DEBUG"] == "INFO" and "blank line" in files[0]["error"]
    warn = messages(report["advice"], "warn")
    assert f"NCCL_SHM_DISABLE=1 (in {tmp_path / '.deepspeed_env'})" in warn
    assert "blank line" in warn


# --------------------------------------------------------------------------- versions


def _vers(**kw: str | None) -> dict:
    return {k.replace("_", "-"): {"version": v, "detail": ""} for k, v in kw.items()}


TORCH_CUDA = {"installed": "2.9.0", "imported": True, "error": None, "cuda": "12.8", "hip": None, "cuda_available": True,
              "device_count": 8, "nccl": "2.27.5", "devices": []}
HOPPER = [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "bf16": True, "fp8": True, "driver": "550"}]
AMPERE = [{"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "bf16": True, "fp8": False, "driver": "550"}]


def test_fla_refuses_hopper_with_old_triton():
    base = dict(deepspeed="0.19.8", flash_linear_attention="0.5.0", causal_conv1d="1.5.0")
    warn = messages(versions_advice(_vers(**base, triton="3.5.1"), TORCH_CUDA, HOPPER, None), "warn")
    assert "3.7.1" in warn and "tilelang" in warn and "Hopper" in warn
    assert "3.7.1" not in messages(versions_advice(_vers(**base, triton="3.7.1"), TORCH_CUDA, HOPPER, None))
    assert "3.7.1" not in messages(versions_advice(_vers(**base, triton="3.5.1"), TORCH_CUDA, AMPERE, None))
    assert "3.7.1" not in messages(versions_advice(_vers(**base, triton="3.3.1"), TORCH_CUDA, HOPPER, None))
    with_tl = versions_advice(_vers(**base, triton="3.5.1", tilelang="0.1.9"), TORCH_CUDA, HOPPER, None)
    assert "TileLang" in messages(with_tl, "info") and "3.7.1" not in messages(with_tl, "warn")
    # no GPU here (login node): said as a condition, not a warning
    assert "If this environment runs on H100/H200" in messages(versions_advice(_vers(**base, triton="3.5.1"), TORCH_CUDA, [], "nvidia-smi: not found"), "info")


def test_version_advice_misc():
    old_torch = {**TORCH_CUDA, "installed": "2.3.1"}
    assert "#7514" in messages(versions_advice(_vers(deepspeed="0.19.8"), old_torch, AMPERE, None), "warn")
    cpu_torch = {**TORCH_CUDA, "cuda": None, "cuda_available": False, "device_count": 0}
    assert "CPU-only build" in messages(versions_advice(_vers(deepspeed="0.19.8"), cpu_torch, AMPERE, None), "warn")
    v100 = [{"name": "Tesla V100-SXM2-32GB", "compute_capability": "7.0", "bf16": False, "fp8": False, "driver": "550"}]
    assert "fp16 with loss scaling" in messages(versions_advice(_vers(deepspeed="0.19.8"), TORCH_CUDA, v100, None))
    assert "Qwen3-Next" in messages(versions_advice(_vers(deepspeed="0.19.8"), TORCH_CUDA, AMPERE, None), "info")


# --------------------------------------------------------------------------- the real command on this machine


def qwen_ds(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    code = f"{pre}\nfrom qwen_ds.cli import main\nmain({list(args)!r})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO,
                          env=dict(os.environ))


def test_real_doctor_json():
    proc = qwen_ds("doctor", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert tuple(report) == SECTIONS
    assert report["versions"]["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    if shutil.which("nvidia-smi") is None:
        assert report["gpus"]["nvidia_smi_error"] == "nvidia-smi: not found"
        assert report["topology"]["error"] == "nvidia-smi: not found"
        assert "nvidia-smi: not found" in messages(report["advice"])


def test_real_doctor_human():
    proc = qwen_ds("doctor")
    assert proc.returncode == 0, proc.stderr
    for title in ("Versions", "GPUs", "Interconnect", "Limits", "Launcher backends", "Environment", "Advice"):
        assert f"\n{title}\n" in proc.stdout
    if shutil.which("nvidia-smi") is None:
        assert "nvidia-smi: not found" in proc.stdout


def test_doctor_without_torch():
    # torch unimportable (sys.modules['torch'] = None): still exit 0, and say so
    proc = qwen_ds("doctor", "--json", pre="import sys; sys.modules['torch'] = None")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    if report["versions"]["torch"]["version"]:
        assert "import torch failed" in report["versions"]["torch"]["detail"]


def test_doctor_module_import_is_light():
    proc = subprocess.run([sys.executable, "-c", "import sys, qwen_ds.commands.cmd_doctor, qwen_ds.doctor; "
                           "print(sorted(m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules))"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
