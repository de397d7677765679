"""qwen-ds launch: argv per backend (dry run), env safety, and real DeepSpeed launches on CPU (gloo):
2 ranks on one host, two no-ssh "nodes" on one machine, a failing rank, a SIGKILLed rank, SIGINT."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen_ds.errors import InputError
from qwen_ds.hostfile import parse_hostfile_text
from qwen_ds.launch import LaunchRequest, build
from qwen_ds.launch.build import RANK_SCRIPT
from qwen_ds.launch.envfile import parse_env_items, read_env_file
from qwen_ds.launch.payload import RankPayload
from qwen_ds.launch.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "tests" / "launch_scripts" / "tiny_zero3.py")
PY = sys.executable


def req(hostfile_text="w0 slots=8\nw1 slots=8\n", **kw):
    hf = parse_hostfile_text(hostfile_text, "hf")
    base = dict(hostfile=hf, config="ds.json", entry=("train", "--steps", "5"), run_dir="/runs/x", plan="plan.json")
    base.update(kw)
    return LaunchRequest(**base)


def test_dry_run_argv_pdsh():
    spec = build(req(python="python", env={"A": "1"}))
    assert list(spec.argv[:-1]) == [
        "python", "-u", "-m", "deepspeed.launcher.runner", "--hostfile", "hf", "--master_addr", "w0", "--master_port", "29500",
        "--launcher", "pdsh", "--module", "qwen_ds.launch.rank", "--payload"]
    assert RankPayload.decode(spec.argv[-1]) == RankPayload(
        run_dir="/runs/x", kind="builtin", target="qwen_ds.runtime.train",
        args=("--config", "ds.json", "--plan", "plan.json", "--steps", "5"), env={"A": "1"})
    assert not spec.local and spec.resources == {"w0": list(range(8)), "w1": list(range(8))}


@pytest.mark.parametrize("launcher", ["openmpi", "mvapich", "mpich", "impi", "slurm"])
def test_dry_run_argv_mpi_backends(launcher):
    spec = build(req(launcher=launcher, python="python", master_addr="10.0.0.1", master_port=29600))
    argv = list(spec.argv)
    assert argv[argv.index("--launcher") + 1] == launcher
    assert argv[argv.index("--master_addr") + 1] == "10.0.0.1" and argv[argv.index("--master_port") + 1] == "29600"
    assert "--no_ssh_check" not in argv


def test_dry_run_argv_single_host_and_no_ssh():
    spec = build(req("localhost slots=2\n", entry=("-m", "my.mod", "--x", "1"), python="python", plan=None))
    argv = list(spec.argv)
    assert "--no_ssh_check" in argv and argv[argv.index("--master_addr") + 1] == "127.0.0.1" and "--launcher" not in argv
    job = RankPayload.decode(argv[-1])
    assert argv[-2] == "--payload" and (job.kind, job.target, job.args) == ("module", "my.mod", ("--x", "1"))
    assert spec.local
    spec = build(req(launcher="no-ssh", node_rank=1, python="python", entry=("s.py",)))
    argv = list(spec.argv)
    assert argv[argv.index("--node_rank") + 1] == "1" and "--no_ssh" in argv and spec.local


@pytest.mark.parametrize("kw,match", [
    (dict(launcher="no-ssh"), "needs --node-rank"),
    (dict(launcher="no-ssh", node_rank=2), "needs --node-rank 0..1"),
    (dict(node_rank=0), "only for --launcher no-ssh"),
    (dict(include="w0", exclude="w1"), "mutually exclusive"),
    (dict(master_port=70000), "1-65535"),
    (dict(entry=()), "needs an ENTRY"),
    (dict(entry=("-m",)), "module name"),
])
def test_bad_requests(kw, match):
    with pytest.raises(InputError, match=match):
        build(req(**kw))


def test_master_port_auto_picks_a_free_port_on_one_host_only():
    from qwen_ds.errors import InputError
    from qwen_ds.launch.build import parse_master_port
    from qwen_ds.launch.ports import port_free

    one = parse_hostfile_text("localhost slots=2\n", "hf")
    port = parse_master_port("auto", one)
    assert 1024 <= port <= 65535 and port_free(port)
    assert parse_master_port(" 29600 ", one) == 29600
    with pytest.raises(InputError, match="every node must use the same port"):
        parse_master_port("auto", parse_hostfile_text("w0 slots=8\nw1 slots=8\n", "hf"))
    with pytest.raises(InputError, match="'x1'.*1-65535 or 'auto'"):
        parse_master_port("x1", one)


def test_preflight_names_a_busy_master_port(tiny_config):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(tiny_config / "hostfile"), "--config",
                            str(tiny_config / "ds_config.json"), "--master-port", str(port), "train"],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and f"--master-port {port} is in use on this host" in p.stderr


@pytest.mark.parametrize("launcher", ["mvapich", "mpich", "impi", "slurm"])
def test_unequal_slots_refused_for_mvapich_mpich_impi_and_slurm(launcher):
    with pytest.raises(InputError, match="same slots="):
        build(req("a slots=8\nb slots=4\n", launcher=launcher))


def test_mpich_gets_the_rank_wrapper_as_a_script_file_only_on_its_multi_node_path():
    """DeepSpeed's MPICH runner with --module runs `python -u -m /path/launcher_helper.py` (no such module)."""
    multi = list(build(req(launcher="mpich", python="python")).argv)
    assert "--module" not in multi and multi[multi.index("--launcher") + 2:-1] == [RANK_SCRIPT, "--payload"]
    assert Path(RANK_SCRIPT).is_file()
    local = list(build(req(launcher="mpich", python="python", include="w1")).argv)
    assert local[local.index("--module") + 1] == "qwen_ds.launch.rank"


@pytest.mark.parametrize("item,match", [("1A=x", "variable name"), ("A B=x", "variable name"), ("noequals", "KEY=VALUE"),
                                        ("A\nB=x", "variable name"), ("RANK=3", "set per rank by DeepSpeed"),
                                        ("CUDA_VISIBLE_DEVICES=0", "--include"), ("A=x\0y", "NUL"),
                                        ("A=\udcff\udcfe", "not valid UTF-8")])
def test_env_items_refused(item, match):
    with pytest.raises(InputError, match=match):
        parse_env_items([item])


def test_env_values_are_kept_byte_for_byte():
    values = ["a\nb", "x\ry", "$(id)", "`id`", "a\"b'c", " sp ", "\x0b\x0c\x1c\x85\u2028", "", "=="]
    got = parse_env_items([f"V{i}={v}" for i, v in enumerate(values)])
    assert list(got.values()) == values
    job = RankPayload(run_dir="/r", kind="script", target="s.py", args=tuple(values), env=got)
    token = job.encode()
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
    assert RankPayload.decode(token) == job


def test_deepspeed_env_is_read_as_deepspeed_reads_it(tmp_path):
    f = tmp_path / ".deepspeed_env"
    f.write_bytes(b"A= 1 \r\nB=x\x0by\x0cz\nC=a=b\rD=\xc2\x85\n")
    assert read_env_file(f) == {"A": "1", "B": "x\x0by\x0cz", "C": "a=b", "D": ""}  # str.strip() drops U+0085
    f.write_text("A=1\n\nB=2\n")
    with pytest.raises(InputError, match="line 2: blank line"):
        read_env_file(f)


# ------------------------------------------------------------------ real launches (DeepSpeed on CPU, gloo)

@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfg")
    hf = out / "hostfile"
    hf.write_text("localhost slots=2\n")
    p = subprocess.run([PY, "-m", "qwen_ds.cli", "gen-config", "-m", "tiny-qwen3", "-g", "H100-SXM", "--hostfile", str(hf),
                        "--zero", "3", "--micro-batch", "1", "--grad-accum", "1", "--no-checkpointing", "--offload-optimizer", "none",
                        "--offload-param", "none", "--tp", "1", "--pp", "1", "--seq-len", "32", "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return out


def launch_cmd(cfg_dir, run_dir, *extra, hostfile=None, env=()):
    cmd = [PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(hostfile or cfg_dir / "hostfile"), "--config",
           str(cfg_dir / "ds_config.json"), "--master-port", str(free_port()), "--run-dir", str(run_dir)]
    for e in env:
        cmd += ["--env", e]
    return cmd + list(extra) + [SCRIPT, "--config", str(cfg_dir / "ds_config.json")]


def leftovers(run_dir) -> list[int]:
    """PIDs of any process still carrying this run's QWEN_DS_RUN_DIR."""
    tag = f"QWEN_DS_RUN_DIR={run_dir}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if tag in (d / "environ").read_bytes().split(b"\0"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def rank_pid(run_dir, rank) -> int | None:
    tag = f"QWEN_DS_RUN_DIR={run_dir}".encode()
    for pid in leftovers(run_dir):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if tag in env and f"RANK={rank}".encode() in env and b"tiny_zero3.py" in cmd and b"qwen_ds.launch.rank" not in cmd:
            return pid
    return None


ENV = {**os.environ, "DS_ACCELERATOR": "cpu"}


@pytest.mark.slow
def test_two_ranks_real_zero3_step(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    p = subprocess.run(launch_cmd(tiny_config, run_dir), capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "[rank 0] TINY_DONE" in p.stdout and "[rank 1] TINY_DONE" in p.stdout and "world 2" in p.stdout
    assert {json.loads(f.read_text())["returncode"] for f in run_dir.glob("rank-*.json")} == {0}
    assert not leftovers(run_dir)


@pytest.mark.slow
def test_two_nodes_on_one_machine_no_ssh(tiny_config, tmp_path):
    hf = tmp_path / "hf2"
    hf.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        cmd = [PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(hf), "--config", str(tiny_config / "ds_config.json"),
               "--launcher", "no-ssh", "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
               "--run-dir", str(tmp_path / f"n{rank}"), SCRIPT, "--config", str(tiny_config / "ds_config.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "[rank 0] TINY_DONE" in outs[0] and "[rank 1] TINY_DONE" in outs[1] and "world 2" in outs[1]


@pytest.mark.slow
def test_a_rank_that_exits_1_fails_the_launch(tiny_config, tmp_path):
    run_dir = tmp_path / "run"  # the other rank waits in a collective: the launch must end, not hang (timeout = hang guard)
    p = subprocess.run(launch_cmd(tiny_config, run_dir, env=["TINY_FAIL_RANK=1"]), capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode != 0 and "rank 1 failing on purpose" in p.stdout
    assert "qwen-ds launch: rank 1 failed first (exit 1)" in p.stderr
    assert not leftovers(run_dir)


def _start_and_wait_ready(cmd, timeout=600):
    """Start a launch and wait until both ranks print READY; ``timeout`` only guards against a hang."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    ready, lines, deadline = set(), [], time.monotonic() + timeout
    while len(ready) < 2:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "".join(lines[-40:])
        lines.append(line)
        if "READY rank" in line:
            ready.add(line.split("READY rank")[1].strip())
        if time.monotonic() > deadline:  # a hang guard, not a speed check
            pytest.fail("the ranks never printed READY:\n" + "".join(lines[-40:]))
    return proc


@pytest.mark.slow
def test_a_sigkilled_rank_fails_the_launch_and_leaves_nothing(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    # rank 0 sleeps an hour: the job can only end in time because the launch reacted to the kill
    proc = _start_and_wait_ready(launch_cmd(tiny_config, run_dir, env=["TINY_SLEEP=3600"]))
    pid = rank_pid(run_dir, 1)
    assert pid, "rank 1 process not found"
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)  # a hang guard only
    assert proc.returncode != 0
    assert "rank 1 failed first: killed by SIGKILL, usually the kernel's OOM killer" in out
    time.sleep(0.5)
    assert not leftovers(run_dir)


@pytest.mark.slow
def test_sigint_to_launch_ends_every_rank(tiny_config, tmp_path):
    run_dir = tmp_path / "run"
    proc = _start_and_wait_ready(launch_cmd(tiny_config, run_dir, env=["TINY_SLEEP=3600"]))  # ends only if killed
    assert rank_pid(run_dir, 0) and rank_pid(run_dir, 1)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=600)  # a hang guard only
    assert proc.returncode == 128 + signal.SIGINT
    time.sleep(0.5)
    assert not leftovers(run_dir)


def test_preflight_refuses_before_starting(tiny_config, tmp_path):
    bad = tmp_path / "bad.json"
    cfg = json.loads((tiny_config / "ds_config.json").read_text())
    cfg["train_batch_size"] = 3
    bad.write_text(json.dumps(cfg))
    p = subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(tiny_config / "hostfile"), "--config", str(bad),
                        "--run-dir", str(tmp_path / "r"), SCRIPT], capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and "train_batch_size 3" in p.stderr
    assert not (tmp_path / "r").exists()
    p = subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(tiny_config / "hostfile"), "--config",
                        str(tiny_config / "ds_config.json"), "--run-dir", str(tmp_path / "r"), "missing_script.py"],
                       capture_output=True, text=True, env=ENV)
    assert p.returncode == 2 and "missing_script.py does not exist" in p.stderr


def test_dry_run_prints_command_env_and_remote_command(tiny_config, tmp_path):
    p = subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(ROOT / "hostfiles" / "a100-2x8"), "--config",
                        str(tiny_config / "ds_config.json"), "--env", "NCCL_SOCKET_IFNAME=ib0", "--env", "S=a b", "--dry-run",
                        "train"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    argv = shlex.split(lines[1])
    assert argv[argv.index("--launcher") + 1] == "pdsh" and RankPayload.decode(argv[-1]).target == "qwen_ds.runtime.train"
    env = lines[lines.index("# environment set in every rank (shell-quoted)") + 1:]
    assert "NCCL_SOCKET_IFNAME=ib0" in env and "S='a b'" in env
    remote = lines[lines.index("# remote command: what pdsh hands each node's shell (pdsh replaces %n with the node's rank)") + 1]
    assert f"cd {tmp_path};" in remote and remote.endswith(f"qwen_ds.launch.rank --payload {argv[-1]}")
    assert not (tmp_path / ".deepspeed_env").exists()


def test_first_failure_names_the_earliest_failed_rank():
    from qwen_ds.launch.run import first_failure

    assert first_failure({0: {"rank": 0, "returncode": 0}}) is None
    st = {0: {"rank": 0, "returncode": -9, "signal": 9, "ended": 20.0},   # killed by the launcher afterwards
          1: {"rank": 1, "returncode": 1, "signal": None, "ended": 10.0}}
    assert first_failure(st).startswith("rank 1 failed first (exit 1)")
    st[1]["ended"] = 30.0
    assert "rank 0 failed first: killed by SIGKILL" in first_failure(st)
    assert first_failure({3: {"rank": 3, "returncode": -15, "signal": 15}}) == "rank 3 failed first: killed by SIGTERM"


def test_stale_shared_memory_buffers_are_cleared(tmp_path, monkeypatch):
    from qwen_ds.launch import run as run_mod

    monkeypatch.setattr(run_mod, "SHM_DIR", tmp_path)
    mine = [tmp_path / f"deepspeed_allreduce_buffer_0_127.0.0.1_29611_{r}" for r in (0, 1)]
    other = tmp_path / "deepspeed_allreduce_buffer_0_127.0.0.1_29612_0"
    for f in mine + [other]:
        f.write_bytes(b"x")
    assert sorted(run_mod.clear_shm_buffers("127.0.0.1", "29611")) == sorted(mine)
    assert other.exists() and not any(f.exists() for f in mine)


def test_arch_list_suffixes_deepspeed_cannot_parse_are_stripped():
    from qwen_ds.launch.envfile import deepspeed_arch_list, rank_env

    assert deepspeed_arch_list("9.0a") == "9.0"
    assert deepspeed_arch_list("8.0;9.0a;10.0f") == "8.0 9.0 10.0"
    assert deepspeed_arch_list("8.0 9.0") is None and deepspeed_arch_list(None) is None
    assert rank_env({}, {"TORCH_CUDA_ARCH_LIST": "9.0a"})["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert rank_env({"TORCH_CUDA_ARCH_LIST": "9.0a"}, {})["TORCH_CUDA_ARCH_LIST"] == "9.0a"  # an explicit --env wins


@pytest.mark.parametrize("include,exclude,expected", [
    (None, None, {"w0": 8, "w1": 8}),
    ("w1", None, {"w1": 8}),
    ("w0:0,1@w1:3", None, {"w0": 2, "w1": 1}),
    (None, "w1", {"w0": 8}),
    (None, "w0:0,1", {"w0": 6, "w1": 8}),
])
def test_active_resources_follow_deepspeed_filters(include, exclude, expected):
    from qwen_ds.launch.remote import active_resources

    got = active_resources([("w0", 8), ("w1", 8)], include, exclude)
    assert {h: len(ids) for h, ids in got.items()} == expected


@pytest.mark.parametrize("include,match", [("w9", "not in"), ("w0:8", "slots 0..7"), ("w0:a", "integers")])
def test_bad_filters(include, match):
    from qwen_ds.launch.remote import active_resources

    with pytest.raises(InputError, match=match):
        active_resources([("w0", 8), ("w1", 8)], include, None)
