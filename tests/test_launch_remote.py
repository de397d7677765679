"""Nothing a user types runs in a remote shell: real `qwen-ds launch` runs of DeepSpeed's own runner over
two hosts with a stand-in pdsh and ssh on PATH (tests/standins: they hand the joined command to
`sh -c`, after pdsh's %-expansion, as the remote side does). Every hostile value either reaches the
ranks byte for byte or the launch is refused before anything starts, and no marker file appears."""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_ds.launch.ports import free_port
from qwen_ds.launch.remote import Export, export_problem

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROBE = str(ROOT / "tests" / "launch_scripts" / "echo_rank.py")
CONFIG = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": 0}}


def hostile(marks: Path) -> list[str]:
    """One of each: command substitution, backticks, quotes, separators, spaces, $$, backslashes,
    unicode, newlines, pdsh's % sequences, the separators str.splitlines() knows, edges."""
    m = str(marks)
    return [f"$(touch {m}/subst)", f"`touch {m}/tick`", f'a";touch {m}/dq;"', f"a';touch {m}/sq;'", f"; touch {m}/semi;",
            f"&& touch {m}/and", f"x | touch {m}/pipe", "two  spaces\tand tab", "pa$$word$HOME", "back\\slash\\", "\\",
            "ünïcødé ✓ 𝄞", f"line1\nline2; touch {m}/nl", "%h %n %u %% %", "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
            " lead and trail ", "", "-x", '"', "'", "*", "~", "${IFS}"]


@pytest.fixture()
def site(tmp_path):
    """A working directory, an empty HOME, a marker dir, stand-ins first on PATH, a config, 2 hosts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pdsh", "ssh", "mpirun", "ompi_info", "mpiname", "srun", "sinfo"):
        text = (ROOT / "tests" / "standins" / tool).read_text().replace("#!/usr/bin/env python3", f"#!{PY}", 1)
        (bin_dir / tool).write_text(text)
        (bin_dir / tool).chmod(stat.S_IRWXU)
    work, home, marks, out = (tmp_path / d for d in ("work", "home", "marks", "out"))
    for d in (work, home, marks, out):
        d.mkdir()
    (work / "hostfile").write_text("node-a slots=1\nnode-b slots=1\n")
    (work / "ds_config.json").write_text(json.dumps(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NCCL", "UCX", "MV2", "MLFLOW", "DS_ENV"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", HOME=str(home), STANDIN_LOG=str(tmp_path / "standin.log"),
               PYTHONPATH=str(ROOT))
    return {"work": work, "home": home, "marks": marks, "out": out, "env": env, "log": tmp_path / "standin.log"}


def launch(site, *extra, entry_args=(), env_items=(), cwd=None, launcher="pdsh", port=None):
    cmd = [PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(site["work"] / "hostfile"), "--config",
           str(site["work"] / "ds_config.json"), "--launcher", launcher, "--master-addr", "127.0.0.1",
           "--master-port", str(port or free_port()), "--run-dir", str(site["out"] / "run")]
    for item in (f"PROBE_OUT={site['out']}", *env_items):
        cmd += ["--env", item]
    cmd += list(extra) + [PROBE, *entry_args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or site["work"], env=site["env"], timeout=300)


def refused(p, site, *words):
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stdout + p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not site["log"].exists(), "pdsh or ssh was started"
    assert list(site["marks"].iterdir()) == []


@pytest.mark.slow
def test_every_hostile_argument_and_env_value_arrives_byte_for_byte(site):
    values = hostile(site["marks"])
    env_items = [f"V{i}={v}" for i, v in enumerate(values)]
    # allowed through DeepSpeed's own exports too: the user's .deepspeed_env and PYTHON* variables
    (site["work"] / ".deepspeed_env").write_text("NCCL_QWEN_A=a b'c*?[x]~\nNCCL_QWEN_B=ünï ✓:/p,q\n")
    site["env"]["PYTHONQWEN_TEST"] = "spaces  and 'quotes' * ?"
    port = free_port()
    dry = launch(site, "--dry-run", entry_args=values, env_items=env_items, port=port)
    assert dry.returncode == 0, dry.stderr
    p = launch(site, entry_args=values, env_items=env_items, port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert list(site["marks"].iterdir()) == []
    for rank in (0, 1):
        got = json.loads((site["out"] / f"rank-{rank}.json").read_text(encoding="utf-8"))
        assert got["argv"] == values
        assert [got["env"][f"V{i}"] for i in range(len(values))] == values
        assert got["env"]["NCCL_QWEN_A"] == "a b'c*?[x]~" and got["env"]["NCCL_QWEN_B"] == "ünï ✓:/p,q"
        assert got["env"]["PYTHONQWEN_TEST"] == "spaces  and 'quotes' * ?"
    calls = [json.loads(line) for line in site["log"].read_text().splitlines()]
    pdsh = [c for c in calls if c["tool"] == "pdsh"]
    assert len(pdsh) == 1 and pdsh[0]["hosts"] == ["node-a", "node-b"]
    # --dry-run printed exactly the string DeepSpeed's runner handed pdsh
    lines = dry.stdout.splitlines()
    assert lines[lines.index("# remote command: what pdsh hands each node's shell (pdsh replaces %n with the node's rank)")
                 + 1] == pdsh[0]["cmd"]
    assert not any(p.name.startswith(".deepspeed_env.bak") for p in site["work"].iterdir())
    assert (site["work"] / ".deepspeed_env").read_text() == "NCCL_QWEN_A=a b'c*?[x]~\nNCCL_QWEN_B=ünï ✓:/p,q\n"


@pytest.mark.parametrize("addr", ["$(touch {m}/p3)", "`touch {m}/t`", "a;touch {m}/s", "a b", "127.0.0.1\ntouch {m}/n",
                                  "-oProxyCommand=touch {m}/o", ""])
def test_master_addr_that_is_not_an_address_is_refused(site, addr):
    addr = addr.format(m=site["marks"])
    p = launch(site, "--master-addr", addr)
    refused(p, site, "--master-addr", "--launcher pdsh")


@pytest.mark.parametrize("line", ['Q=a";touch {m}/p1;"', "FOO=$(touch {m}/p2)", "B=`touch {m}/b`", "P=pa$$word$HOME",
                                  "H=x%hy", "W=back\\slash", "K;touch {m}/k=1"])
@pytest.mark.parametrize("dry", [False, True])
def test_deepspeed_env_values_the_remote_shell_would_change_are_refused(site, line, dry):
    (site["work"] / ".deepspeed_env").write_text(line.format(m=site["marks"]) + "\n")
    p = launch(site, *(["--dry-run"] if dry else []))
    refused(p, site, ".deepspeed_env line 1", "pdsh" if not line.startswith("K;") else "export NAME")
    assert (site["work"] / ".deepspeed_env").read_text() == line.format(m=site["marks"]) + "\n"


def test_home_deepspeed_env_is_checked_too(site):
    (site["home"] / ".deepspeed_env").write_text(f"A=ok\nFOO=$(touch {site['marks']}/h)\n")
    refused(launch(site), site, str(site["home"] / ".deepspeed_env") + " line 2", "'$'")


@pytest.mark.parametrize("value", ["$(touch {m}/e)", "a\\b", 'a"b', "x\ny", " pad"])
def test_exported_environment_variables_are_checked(site, value):
    site["env"]["NCCL_QWEN_BAD"] = value.format(m=site["marks"])
    refused(launch(site), site, "NCCL_QWEN_BAD", "your environment", "--launcher pdsh")


@pytest.mark.parametrize("name", ["w$(touch {m}/c)", "w x", "w;touch {m}/c2", "wé"])
def test_a_working_directory_the_shell_would_change_is_refused(site, name):
    cwd = site["work"].parent / name.format(m=site["marks"]).replace("/", "_")
    cwd.mkdir()
    refused(launch(site, cwd=cwd), site, "the working directory", "--launcher pdsh")


@pytest.mark.parametrize("launcher,line,why", [
    ("openmpi", "A=a b", "mpirun -x"), ("mvapich", "A=x'y", "mpirun -env"), ("slurm", "A=a b", "srun --export"),
    ("slurm", "A=a,b", "','"), ("openmpi", "A=$(touch {m}/o)", "mpirun -x")])
def test_mpi_and_slurm_refuse_values_deepspeed_would_quote(site, launcher, line, why):
    (site["work"] / ".deepspeed_env").write_text(line.format(m=site["marks"]) + "\n")
    refused(launch(site, "--dry-run", launcher=launcher), site, f"--launcher {launcher}", why)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["openmpi", "mvapich", "slurm"])
def test_mpi_and_slurm_launches_deliver_hostile_values_byte_for_byte(site, launcher):
    """DeepSpeed's real MPI / Slurm runners with stand-in mpirun / srun (argv only, no shell, exports set literally)."""
    (site["work"] / ".deepspeed_env").write_text("NCCL_QWEN_A=plain/path:1.5@x\n")
    values = hostile(site["marks"])
    p = launch(site, launcher=launcher, entry_args=values, env_items=[f"V{i}={v}" for i, v in enumerate(values)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert list(site["marks"].iterdir()) == []
    for rank in (0, 1):
        got = json.loads((site["out"] / f"rank-{rank}.json").read_text(encoding="utf-8"))
        assert got["argv"] == values and [got["env"][f"V{i}"] for i in range(len(values))] == values
        assert got["env"]["NCCL_QWEN_A"] == "plain/path:1.5@x"
    tool = "srun" if launcher == "slurm" else "mpirun"
    calls = [json.loads(line) for line in site["log"].read_text().splitlines()]
    started = [c for c in calls if c["tool"] != "ssh"]  # the runner ssh-checks the first host first
    assert [c["tool"] for c in started] == [tool] and started[0]["exports"]["NCCL_QWEN_A"] == "plain/path:1.5@x"


@pytest.mark.parametrize("launcher", ["openmpi", "mvapich", "slurm"])
def test_mpi_and_slurm_carry_hostile_arguments_in_the_payload(site, launcher):
    """Plain exports pass; the entry's arguments and --env values are one inert token on every backend."""
    (site["work"] / ".deepspeed_env").write_text("A=plain/path:1.5@x\n")
    values = hostile(site["marks"])
    p = launch(site, "--dry-run", launcher=launcher, entry_args=values, env_items=[f"V{i}={v}" for i, v in enumerate(values)])
    assert p.returncode == 0, p.stderr
    from qwen_ds.launch.payload import RankPayload

    argv = shlex.split(p.stdout.splitlines()[1])
    job = RankPayload.decode(argv[argv.index("--payload") + 1])
    assert list(job.args) == values and [job.env[f"V{i}"] for i in range(len(values))] == values


@pytest.mark.parametrize("value,backend,ok", [
    ("a b", "pdsh", True), ("a'b*?~[]", "pdsh", True), ("a$b", "pdsh", False), ("a`b", "pdsh", False), ('a"b', "pdsh", False),
    ("a\\b", "pdsh", False), ("%n", "pdsh", False), ("50%", "pdsh", True), ("%d", "pdsh", True), ("ünï", "pdsh", True),
    (" a", "pdsh", False), ("a\tb", "pdsh", False), ("a/b:c,d@e+f=g-h.i", "openmpi", True), ("a b", "openmpi", False),
    ("a,b", "slurm", False), ("a,b", "mvapich", True), ("ünï", "slurm", True), ("", "slurm", True)])
def test_export_rule_per_backend(value, backend, ok):
    assert (export_problem(Export("K", value, "env"), backend) is None) == ok


@pytest.mark.slow
def test_concurrent_launches_from_one_directory_keep_their_own_env_and_touch_no_file(site):
    """4 launches at once (they once raced on a shared .deepspeed_env and lost A=1; each left a backup)."""
    (site["work"] / ".deepspeed_env").write_text("NCCL_KEEP=mine\n")
    procs = []
    for i in range(4):
        out = site["out"] / f"l{i}"
        out.mkdir()
        cmd = [PY, "-m", "qwen_ds.cli", "launch", "--hostfile", str(site["work"] / "hostfile"), "--config",
               str(site["work"] / "ds_config.json"), "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "--run-dir", str(out / "run"), "--env", f"PROBE_OUT={out}", "--env", f"A={i}", "--env", f"SECRET=s{i}$x",
               PROBE]
        procs.append(subprocess.Popen(cmd, cwd=site["work"], env=site["env"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    for i in range(4):
        for rank in (0, 1):
            env = json.loads((site["out"] / f"l{i}" / f"rank-{rank}.json").read_text())["env"]
            assert (env["A"], env["SECRET"], env["NCCL_KEEP"]) == (str(i), f"s{i}$x", "mine")
    assert sorted(p.name for p in site["work"].iterdir()) == [".deepspeed_env", "ds_config.json", "hostfile"]
    assert (site["work"] / ".deepspeed_env").read_text() == "NCCL_KEEP=mine\n"


def test_slurm_gets_the_rank_module_as_dash_m_only_on_its_multi_node_path():
    from qwen_ds.hostfile import parse_hostfile_text
    from qwen_ds.launch import LaunchRequest, build

    def argv(text, **kw):
        hf = parse_hostfile_text(text, "hf")
        return list(build(LaunchRequest(hostfile=hf, config="c.json", entry=("s.py",), run_dir="/r", launcher="slurm", **kw)).argv)

    multi = argv("w0 slots=2\nw1 slots=2\n")
    assert multi[multi.index("--") + 1:multi.index("--") + 4] == ["-m", "qwen_ds.launch.rank", "--payload"]
    assert "--module" not in multi
    for local in (argv("w0 slots=2\n"), argv("w0 slots=2\nw1 slots=2\n", include="w1")):  # DeepSpeed runs these itself
        assert local[local.index("--module") + 1] == "qwen_ds.launch.rank" and "--" not in local
