"""`launch` beyond the basics: --launcher-args, --ssh-port, --bind-cores-to-rank / --bind-core-list,
the mpich and impi launchers, and OpenMPI's max_slots= in a hostfile. Real runs of DeepSpeed 0.19.8's
own runner over two "hosts" with the stand-ins of tests/standins (pdsh, ssh, mpirun, numactl) first
on PATH; every check is on the exact argv or remote command the stand-in received."""

import json
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import test_launch_remote
from test_launch_remote import ROOT, hostile, launch, refused

from qwen_ds.errors import InputError
from qwen_ds.launch.build import RANK_SCRIPT
from qwen_ds.launch.passthrough import parse_bind_core_list, parse_ssh_port, split_launcher_args
from qwen_ds.launch.payload import RankPayload
from qwen_ds.launch.ports import free_port

PY = sys.executable
HELPER = str(Path(__import__("deepspeed.launcher", fromlist=["x"]).__file__).parent / "launcher_helper.py")
site = test_launch_remote.site  # the fixture: a work dir, an empty HOME, the stand-ins first on PATH, 2 hosts
REMOTE = "# remote command: what pdsh hands each node's shell (pdsh replaces %n with the node's rank)"


def calls(site, tool=None):
    if not site["log"].exists():
        return []
    out = [json.loads(line) for line in site["log"].read_text().splitlines()]
    return [c for c in out if tool is None or c["tool"] == tool]


def after(lines, header):
    return lines[lines.index(header) + 1]


def runner_argv(dry):
    return shlex.split(dry.stdout.splitlines()[1])


def ranks(site, n=2):
    got = {}
    for r in range(n):
        got[r] = json.loads((site["out"] / f"rank-{r}.json").read_text(encoding="utf-8"))
    assert sorted(p.name for p in site["out"].glob("rank-*.json")) == [f"rank-{r}.json" for r in range(n)]
    return got


def add_numactl(site):
    bin_dir = Path(site["env"]["PATH"].split(":")[0])
    text = (ROOT / "tests" / "standins" / "numactl").read_text().replace("#!/usr/bin/env python3", f"#!{PY}", 1)
    (bin_dir / "numactl").write_text(text)
    (bin_dir / "numactl").chmod(stat.S_IRWXU)


def test_help_documents_each_new_option():
    out = subprocess.run([PY, "-m", "qwen_ds.cli", "launch", "--help"], capture_output=True, text=True).stdout
    flat = " ".join(out.split())
    for flag, deepspeed in [("--launcher-args", "--launcher_args"), ("--ssh-port", "--ssh_port"),
                            ("--bind-cores-to-rank", "--bind_cores_to_rank"), ("--bind-core-list", "--bind_core_list")]:
        assert flag in flat and deepspeed in flat, flag
    assert "mpich" in flat and "impi" in flat


@pytest.mark.slow
def test_pdsh_gets_launcher_args_as_its_options_and_ssh_port_and_the_remote_command_is_unchanged(site):
    port, values = free_port(), hostile(site["marks"])
    extra = ("--launcher-args", "-l admin7 -t 30 -N", "--ssh-port", "2222")
    dry = launch(site, *extra, "--dry-run", entry_args=values, port=port)
    assert dry.returncode == 0, dry.stderr
    assert "'--launcher_args=-l admin7 -t 30 -N'" in dry.stdout.splitlines()[1]
    argv = runner_argv(dry)
    assert argv[argv.index("--ssh_port") + 1] == "2222"
    lines = dry.stdout.splitlines()
    assert after(lines, "# pdsh command: DeepSpeed's runner starts it without a shell, then the remote command") == \
        "pdsh -S -f 1024 -w node-a,node-b -l admin7 -t 30 -N"
    p = launch(site, *extra, entry_args=values, port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (pdsh,) = calls(site, "pdsh")
    assert pdsh["options"] == ["-S", "-f", "1024", "-w", "node-a,node-b", "-l", "admin7", "-t", "30", "-N"]
    assert pdsh["cmd"] == after(lines, REMOTE)  # nothing of --launcher-args in what the nodes' shells run
    assert "admin7" not in pdsh["cmd"] and pdsh["ssh_args_append"].split() == ["-p", "2222"]
    (ssh,) = calls(site, "ssh")  # DeepSpeed's reachability check
    assert ssh["raw"] == ["-o", "PasswordAuthentication=no", "-p", "2222", "node-a", "hostname"]
    assert all(got["argv"] == values for got in ranks(site).values())
    assert list(site["marks"].iterdir()) == []


def expected_mpi_argv(launcher, site, port, token, launcher_words, bind=False):
    exports = [("PYTHONPATH", f"{site['work']}:{ROOT}"), ("NCCL_QWEN_A", "plain/path:1.5@x")]
    common = ["MASTER_ADDR", "127.0.0.1", "MASTER_PORT", str(port), "WORLD_SIZE", "2", "LOCAL_SIZE", "1"]
    if launcher == "mpich":
        genv = [w for k, v in exports for w in ("-genv", f"{k}={v}")]
        genv += [w for i in range(0, 8, 2) for w in ("-genv", *common[i:i + 2])]
        return (["-n", "2", "-ppn", "1", *launcher_words, *genv, "-hosts", "node-a,node-b", PY, "-u", HELPER,
                 "--launcher", "mpich", RANK_SCRIPT, "--payload", token])
    genv = [w for k, v in exports for w in ("-genv", k, v)]
    genv += ["-genv", "OMP_NUM_THREADS", "4"] if bind else []
    genv += [w for i in range(0, 8, 2) for w in ("-genv", *common[i:i + 2])] + ["-genv", "I_MPI_PIN", "0"]
    per_rank = []
    for r in (0, 1):
        per_rank += ([":"] if r else []) + ["-n", "1", "-env", "RANK", str(r), "-env", "LOCAL_RANK", "0"]
        per_rank += (["numactl", "-m", "0", "-C", "0-3"] if bind else [])
        per_rank += [PY, "-u", "-m", "qwen_ds.launch.rank", "--payload", token]
    return ["-ppn", "1", *launcher_words, *genv, "-hosts", "node-a,node-b", *per_rank]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,words,bind", [("mpich", "-bind-to core", False), ("impi", "-iface lo", False),
                                                 ("impi", "-print-rank-map", True)])
def test_mpich_and_impi_run_through_deepspeed_with_the_exact_mpirun_argv(site, launcher, words, bind):
    """DeepSpeed's MPICHRunner (its launcher_helper maps PMI_RANK / MPI_LOCALRANKID) and IMPIRunner (one MPMD
    section per rank, -env RANK / LOCAL_RANK), with the stand-in mpirun; hostile arguments and --env values
    arrive byte for byte."""
    (site["work"] / ".deepspeed_env").write_text("NCCL_QWEN_A=plain/path:1.5@x\n")
    if bind:
        add_numactl(site)
    port, values = free_port(), hostile(site["marks"])
    env_items = [f"V{i}={v}" for i, v in enumerate(values)]
    extra = ["--launcher-args", words] + (["--bind-cores-to-rank", "--bind-core-list", "0-3"] if bind else [])
    dry = launch(site, *extra, "--dry-run", launcher=launcher, entry_args=values, env_items=env_items, port=port)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert after(lines, "# --launcher-args: the words DeepSpeed's runner inserts into the mpirun command line "
                        "(shell-quoted)") == words
    argv = runner_argv(dry)
    token = argv[argv.index("--payload") + 1]
    assert list(RankPayload.decode(token).args) == values
    p = launch(site, *extra, launcher=launcher, entry_args=values, env_items=env_items, port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (mpirun,) = calls(site, "mpirun")
    assert mpirun["raw"] == expected_mpi_argv(launcher, site, port, token, words.split(), bind)
    for r, got in ranks(site).items():
        assert got["argv"] == values and [got["env"][f"V{i}"] for i in range(len(values))] == values
        assert (got["env"]["RANK"], got["env"]["LOCAL_RANK"], got["env"]["WORLD_SIZE"]) == (str(r), "0", "2")
        assert (got["env"]["MASTER_ADDR"], got["env"]["MASTER_PORT"]) == ("127.0.0.1", str(port))
        assert got["env"]["NCCL_QWEN_A"] == "plain/path:1.5@x"
    if bind:
        bound = calls(site, "numactl")
        assert [c["raw"][:5] for c in bound] == [["-m", "0", "-C", "0-3", PY]] * 2
        assert {c["omp_num_threads"] for c in bound} == {"4"}
    assert list(site["marks"].iterdir()) == []


@pytest.mark.slow
def test_openmpi_launcher_args_replace_deepspeeds_default_interface(site):
    port = free_port()
    p = launch(site, "--launcher-args", "--mca btl_tcp_if_include lo --mca btl ^openib,tcp", launcher="openmpi",
               port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (mpirun,) = calls(site, "mpirun")
    hostfile = str(site["work"] / "hostfile")
    assert mpirun["raw"][:15] == ["-n", "2", "-hostfile", hostfile, "--mca", "btl", "^openib", "--mca",
                                  "btl_tcp_if_include", "lo", "--mca", "btl", "^openib,tcp", "-x", "UCX_TLS=tcp"]
    assert "eth0" not in mpirun["raw"]


@pytest.mark.parametrize("launcher,words", [
    ("pdsh", "-l x;touch {m}/a"), ("pdsh", "-l $(touch {m}/b)"), ("pdsh", "-l `touch {m}/c`"),
    ("pdsh", "; touch {m}/d"), ("pdsh", "touch {m}/e"), ("pdsh", "-l root && touch {m}/f"), ("pdsh", "-l 'a b'"),
    ("pdsh", "-w evil"), ("pdsh", "-R exec"), ("pdsh", "-l"), ("pdsh", "-t 0"), ("pdsh", "-l root extra"),
    ("pdsh", "'unbalanced"), ("pdsh", "%h"), ("pdsh", "-l\nroot"), ("pdsh", " "), ("openmpi", "touch {m}/g"),
    ("openmpi", "--mca x $(touch {m}/h)"), ("mpich", "-genv A `touch {m}/i`"), ("impi", "-n 1 : touch {m}/j"),
    ("slurm", "--comment 'a b'"), ("mvapich", "-env A=x;touch {m}/k")])
def test_hostile_launcher_args_are_refused_before_anything_starts(site, launcher, words):
    words = words.format(m=site["marks"])
    for dry in ((), ("--dry-run",)):
        refused(launch(site, "--launcher-args", words, *dry, launcher=launcher), site, "--launcher-args")


def test_nul_in_launcher_args_is_refused():
    with pytest.raises(InputError, match="control character"):
        split_launcher_args("-l a\0b", "pdsh")


@pytest.mark.parametrize("extra,words", [
    (("--ssh-port", "0"), ("--ssh-port", "1-65535")), (("--ssh-port", "65536"), ("--ssh-port", "1-65535")),
    (("--ssh-port", "-22"), ("--ssh-port",)), (("--ssh-port", "22x"), ("'22x'",)),
    (("--ssh-port", ""), ("--ssh-port",)),
    (("--bind-core-list", "0-3"), ("--bind-cores-to-rank",)),
    (("--bind-cores-to-rank",), ("--bind-cores-to-rank", "pdsh")),
    (("--bind-cores-to-rank", "--bind-core-list", "3-1"), ("start <= end",)),
    (("--bind-cores-to-rank", "--bind-core-list", "0-3,2"), ("ascending",)),
    (("--bind-cores-to-rank", "--bind-core-list", "1, 2"), ("' 2'",)),
    (("--bind-cores-to-rank", "--bind-core-list", "0-99999999"), ("--bind-core-list",)),
    (("--include", "node-a:0@node-b"), ("--include",)),
])
def test_bad_values_exit_2_with_one_line(site, extra, words):
    launcher = "impi" if "--include" in extra else "pdsh"
    refused(launch(site, *extra, "--dry-run", launcher=launcher), site, *words)


def test_options_deepspeed_would_ignore_are_refused(site):
    (site["work"] / "one").write_text("localhost slots=1\n")
    single = ["--hostfile", str(site["work"] / "one")]
    refused(launch(site, *single, "--launcher-args", "-l a", "--dry-run"), site, "--launcher-args", "ignores")
    refused(launch(site, *single, "--ssh-port", "22", "--dry-run"), site, "--ssh-port 22", "nothing uses ssh")
    refused(launch(site, "--node-rank", "0", "--ssh-port", "22", "--dry-run", launcher="no-ssh"), site, "--ssh-port")
    (site["work"] / "hostfile").write_text("node-a slots=2\nnode-b slots=1\n")
    refused(launch(site, "--dry-run", launcher="mpich"), site, "same slots=")
    refused(launch(site, "--bind-cores-to-rank", "--bind-core-list", "0-2", "--dry-run", launcher="impi"), site,
            "same slots=")


def test_bind_cores_on_one_host_shows_in_the_dry_run_and_needs_numactl(site):
    (site["work"] / "one").write_text("localhost slots=2\n")
    p = launch(site, "--hostfile", str(site["work"] / "one"), "--bind-cores-to-rank", "--bind-core-list", "0-1,4-5",
               "--dry-run")
    assert p.returncode == 0, p.stderr
    argv = runner_argv(p)
    i = argv.index("--module")
    assert argv[i - 2:i] == ["--bind_cores_to_rank", "--bind_core_list=0-1,4-5"]
    if shutil.which("numactl", path=site["env"]["PATH"]) is None:
        assert "preflight: --bind-cores-to-rank" in p.stderr and "numactl" in p.stderr
    refused(launch(site, "--hostfile", str(site["work"] / "one"), "--bind-cores-to-rank", "--bind-core-list", "3",
                   "--dry-run"), site, "1 cores for 2 ranks")


@pytest.mark.slow
def test_max_slots_warns_and_deepspeed_starts_slots_ranks(site):
    """OpenMPI's max_slots=: one warning per line, and DeepSpeed's real runner starts `slots` ranks per host
    (the world_info it hands pdsh is the one qwen-ds showed)."""
    hf = site["work"] / "hostfile"
    hf.write_text("node-a slots=1 max_slots=4\nnode-b\tslots=1 max_slots=2 # rack B\n")
    port = free_port()
    dry = launch(site, "--dry-run", port=port)
    assert dry.returncode == 0, dry.stderr
    warnings = [line for line in dry.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {hf} line 1: max_slots=4 is OpenMPI syntax; DeepSpeed ignores it and starts slots=1 "
                        "ranks on node-a",
                        f"warning: {hf} line 2: max_slots=2 is OpenMPI syntax; DeepSpeed ignores it and starts slots=1 "
                        "ranks on node-b"]
    p = launch(site, port=port)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (pdsh,) = calls(site, "pdsh")
    assert pdsh["cmd"] == after(dry.stdout.splitlines(), REMOTE)
    assert "--world_info=eyJub2RlLWEiOiBbMF0sICJub2RlLWIiOiBbMF19" in pdsh["cmd"]  # {"node-a": [0], "node-b": [0]}
    assert len(ranks(site)) == 2


@pytest.mark.parametrize("text,launcher,words", [
    ("-l admin -t 30 -u 600 -f 64 -S -b -d -N", "pdsh", ("-l", "admin", "-t", "30", "-u", "600", "-f", "64", "-S", "-b",
                                                         "-d", "-N")),
    ("--mca btl_tcp_if_include 10.0.0.0/8 -x LD_LIBRARY_PATH", "openmpi",
     ("--mca", "btl_tcp_if_include", "10.0.0.0/8", "-x", "LD_LIBRARY_PATH")),
    ("  '-bind-to'   core  ", "mpich", ("-bind-to", "core")), ("--exclusive --comment=run@1", "slurm",
                                                                ("--exclusive", "--comment=run@1"))])
def test_launcher_args_split_as_deepspeed_splits_them(text, launcher, words):
    assert split_launcher_args(text, launcher) == words
    assert shlex.split(shlex.join(words)) == list(words)  # what DeepSpeed's split() gets back from our argv


def test_parsers():
    assert parse_ssh_port(None) is None and parse_ssh_port("22") == 22 and parse_ssh_port("65535") == 65535
    assert parse_bind_core_list("0,2-4,6") == (0, 2, 3, 4, 6)  # DeepSpeed's own example
    for bad in ("\u0663", "+3", "3_0", "-1"):
        with pytest.raises(InputError):
            parse_bind_core_list(bad)
