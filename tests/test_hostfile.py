"""Hostfile parsing: DeepSpeed's rules plus ours, each error naming file and line."""

import re
from pathlib import Path

import pytest

from qwen_ds.errors import InputError
from qwen_ds.hostfile import parse_hostfile_text, read_hostfile

HOSTFILES = Path(__file__).resolve().parent.parent / "hostfiles"


@pytest.mark.parametrize("name,nodes,gpn", [("localhost", 1, 2), ("v100-2x8", 2, 8), ("a100-2x8", 2, 8), ("h100-4x8", 4, 8)])
def test_shipped_hostfiles(name, nodes, gpn):
    hf = read_hostfile(HOSTFILES / name)
    assert (hf.nodes, hf.gpus_per_node, hf.world_size) == (nodes, gpn, nodes * gpn)


def test_comments_blank_lines_order_and_tabs():
    hf = parse_hostfile_text("# cluster\n\nw1 slots=4 # rack A\n\tw0\tslots=4\nuser@w2 slots=4\n")
    assert [h.name for h in hf.hosts] == ["w1", "w0", "user@w2"]
    assert [h.line for h in hf.hosts] == [3, 4, 5]


@pytest.mark.parametrize("text,line,match", [
    ("w0 slots=8\nw0 slots=8\n", 2, "listed again"),
    ("w0 slots = 8\n", 1, "not 'HOST slots=N'"),
    ("w0\n", 1, "not 'HOST slots=N'"),
    ("w0 slots=0\n", 1, "slots=0"),
    ("w0 slots=8 max_slots=8 x\n", 1, "only a '# comment'"),
    ("w0 slots=8 max_slots=4\n", 1, "max_slots=4 is less than slots=8"),
    ("w0;rm -rf / slots=8\n", 1, "not .HOST slots=N."),
    ("w0;reboot slots=8\n", 1, "characters outside"),
    ("$(reboot) slots=8\n", 1, "characters outside"),
    ("w`id` slots=8\n", 1, "characters outside"),
])
def test_bad_lines_name_the_line(text, line, match):
    with pytest.raises(InputError, match=match) as err:
        parse_hostfile_text(text, "hf")
    assert f"hf line {line}" in str(err.value)


def test_empty_and_unreadable():
    with pytest.raises(InputError, match="no 'HOST slots=N' entries"):
        parse_hostfile_text("# nothing\n\n", "hf")
    with pytest.raises(InputError, match="cannot read"):
        read_hostfile("/nonexistent/hostfile")


def test_unequal_slots_refused_for_cluster_shape():
    hf = parse_hostfile_text("a slots=8\nb slots=4\n", "hf")
    assert hf.world_size == 12
    with pytest.raises(InputError, match="different slot counts"):
        hf.gpus_per_node


# ------------------------------------------------------------ hostfile check / from-slurm
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from qwen_ds.hostfile import expand_slurm_nodelist, hostfile_text  # noqa: E402


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
    ("gpu[01-02,10],login1", ["gpu01", "gpu02", "gpu10", "login1"]),
    ("rack[1-2]-n[7-8]", ["rack1-n7", "rack1-n8", "rack2-n7", "rack2-n8"]),
    ("a,b", ["a", "b"]),
    ("node[8-10]", ["node8", "node9", "node10"]),
])
def test_expand_slurm_nodelist(nodelist, hosts):
    assert expand_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["x[1-2", "x]1", "x[3-1]", "x[a-b]", "", "a;b"])
def test_bad_slurm_nodelists(bad):
    with pytest.raises(InputError):
        expand_slurm_nodelist(bad)


def test_generated_hostfile_round_trips():
    hf = parse_hostfile_text(hostfile_text(expand_slurm_nodelist("gpu[1-4]"), 8))
    assert (hf.nodes, hf.gpus_per_node) == (4, 8)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qwen_ds.cli", *args], capture_output=True, text=True, env=env)


def test_hostfile_check_cli():
    p = cli("hostfile", "check", str(HOSTFILES / "h100-4x8"), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["world_size"] == 32
    p = cli("hostfile", "check", str(HOSTFILES / "a100-2x8"))
    assert "2 x 8 = world size 16" in p.stdout


def test_hostfile_check_cli_bad_file(tmp_path):
    f = tmp_path / "hf"
    f.write_text("w0 slots=8\nw0 slots=8\n")
    p = cli("hostfile", "check", str(f))
    assert p.returncode == 2 and "line 2" in p.stderr and "Traceback" not in p.stderr


def test_from_slurm_cli_env_and_no_overwrite(tmp_path):
    import os

    out = tmp_path / "hostfile"
    env = {**os.environ, "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_GPUS_ON_NODE": "4"}
    p = cli("hostfile", "from-slurm", "-o", str(out), env=env)
    assert p.returncode == 0 and out.read_text() == "gpu01 slots=4\ngpu02 slots=4\n"
    p = cli("hostfile", "from-slurm", "-o", str(out), env={**env, "SLURM_GPUS_ON_NODE": "8"})
    assert p.returncode == 2 and "--force" in p.stderr and out.read_text() == "gpu01 slots=4\ngpu02 slots=4\n"
    p = cli("hostfile", "from-slurm", "--gpus-per-node", "2", env={k: v for k, v in os.environ.items() if not k.startswith("SLURM")})
    assert p.returncode == 2 and "SLURM_JOB_NODELIST" in p.stderr


# ------------------------------------------------------------ issue #11 section 6: lines, machines, slots
from helpers import run_cli  # noqa: E402

ODD_BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def write(path, text):
    path.write_bytes(text.encode("utf-8"))  # bytes: no newline translation on the way in
    return path


@pytest.mark.parametrize("odd", ODD_BREAKS)
def test_lines_end_only_where_deepspeed_ends_them(tmp_path, odd):
    """DeepSpeed reads 'w0 slots=8<odd>w1 slots=8' as ONE line, host w0 (readlines() breaks on \\n, \\r\\n, \\r only):
    seeing two hosts would plan and launch a cluster DeepSpeed does not start; we refuse, naming the character."""
    f = write(tmp_path / "hf", f"w0 slots=8{odd}w1 slots=8\n")
    with pytest.raises(InputError, match=r"line 1: .*is not a line break for DeepSpeed") as err:
        read_hostfile(f)
    assert ascii(odd) in str(err.value) and "\n" not in str(err.value)
    # the real line breaks still are: \r and \r\n end lines (and count in the line numbers) exactly like \n
    hf = read_hostfile(write(tmp_path / "ok", f"w0 slots=8\rw1 slots=8\r\n{odd}# c{odd}\nw2 slots=8 #{odd}x\n"))
    assert [(h.name, h.line) for h in hf.hosts] == [("w0", 1), ("w1", 2), ("w2", 4)]


@pytest.mark.parametrize("first,second", [("Node1", "node1"), ("user@node1", "node1"), ("w0", "root@W0"), ("a@x", "b@X")])
def test_one_machine_on_two_lines_is_refused(first, second):
    """DNS ignores case and user@ only picks the ssh login: both lines would start ranks on one machine."""
    with pytest.raises(InputError, match=f"hf line 3: {second} is listed again: same machine as {first} on line 1"):
        parse_hostfile_text(f"{first} slots=8\n# other\n{second} slots=8\n", "hf")


@pytest.mark.parametrize("digits,match", [
    ("1025", "slots=1025 is more than 1024"),
    ("100000", "slots=100000 is more than 1024"),
    ("0" * 20 + "2000", "is more than 1024"),
    ("9" * 5000, r"slots=9{60}\.\.\. \(5000 characters\) is more than 1024"),  # int() raises past 4300 digits
    ("\u0668", "non-ASCII digits"),  # Arabic-Indic 8: DeepSpeed's \d and int() take it
], ids=["1025", "100000", "zero-padded-2000", "5000-digits", "arabic-indic-8"])
def test_absurd_slots_are_refused_on_one_line(tmp_path, digits, match):
    rc, out, err = run_cli("hostfile", "check", str(write(tmp_path / "hf", f"w0 slots=1024\nw1 slots={digits}\n")))
    assert rc == 2 and out == "" and err.count("\n") == 1 and "line 2" in err, err
    assert re.search(match, err), err


@pytest.mark.skipif(not Path("/dev/null").is_char_device(), reason="needs /dev/null")
def test_a_device_is_not_a_hostfile():
    """DeepSpeed's fetch_hostfile skips what os.path.isfile() rejects; reading /dev/zero would fill memory."""
    with pytest.raises(InputError, match="/dev/null: not a regular file"):
        read_hostfile("/dev/null")


def test_a_million_digit_slot_count_is_refused_without_converting_it(tmp_path):
    rc, _, err = run_cli("hostfile", "check", str(write(tmp_path / "hf", "w0 slots=" + "7" * 1_000_000 + "\n")))
    assert rc == 2 and len(err) < 300 and "(1000000 characters) is more than 1024" in err, err[:300]


# ------------------------------------------------------------ issue #11 sections 2 and 5: from-slurm -o
@pytest.fixture
def slurm(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-02]")
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "4")


@pytest.mark.parametrize("target,force,match", [
    ("afile/x", False, "afile is a file, not a directory"),
    ("afile/x/y", True, "afile is a file, not a directory"),
    ("adir", True, "adir is a directory; name a file"),
])
def test_from_slurm_output_that_cannot_be_a_file(tmp_path, slurm, target, force, match):
    (tmp_path / "afile").write_text("keep\n")
    (tmp_path / "adir").mkdir()
    rc, out, err = run_cli("hostfile", "from-slurm", "-o", str(tmp_path / target), *(["--force"] if force else []))
    assert rc == 2 and err.startswith("error: -o ") and err.count("\n") == 1 and match in err, err
    assert (tmp_path / "afile").read_text() == "keep\n" and not list((tmp_path / "adir").iterdir())


def test_from_slurm_keeps_a_dangling_link_without_force(tmp_path, slurm):
    link = tmp_path / "hostfile"
    link.symlink_to(tmp_path / "missing")
    rc, _, err = run_cli("hostfile", "from-slurm", "-o", str(link))
    assert rc == 2 and "--force" in err and link.is_symlink(), err
    assert run_cli("hostfile", "from-slurm", "-o", str(link), "--force")[0] == 0
    assert link.read_text() == "gpu01 slots=4\ngpu02 slots=4\n" and not link.is_symlink()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc (a directory nobody can create files in)")
def test_from_slurm_unwritable_directory_is_one_line(slurm):
    rc, _, err = run_cli("hostfile", "from-slurm", "-o", "/proc/qwen-ds-hostfile")
    assert rc == 2 and err.startswith("error: -o /proc/qwen-ds-hostfile: cannot write it") and err.count("\n") == 1, err


@pytest.mark.parametrize("args,env,match", [
    (["--nodelist", "a[1-1000]b[1-1000]"], {}, "more than 100000 hosts"),  # was expanded in full (a[1-99999]b[...] fills memory)
    (["--nodelist", "a[1-150000]"], {}, "range 1-150000 is more than 100000 hosts"),  # checked before the list is built
    (["--nodelist", "a[1-" + "9" * 5000 + "]"], {}, "bad range"),  # was int() of 5000 digits: ValueError traceback
    (["--nodelist", "a[1-\u00b2]"], {}, "bad range"),  # '²'.isdigit() but int('²') raises
    ([], {"SLURM_GPUS_ON_NODE": "\u00b2"}, "no GPU count"),
    ([], {"SLURM_GPUS_ON_NODE": "9" * 5000}, "no GPU count"),
    (["--gpus-per-node", "2000"], {}, "1-1024"),
], ids=["million-hosts", "150000-range", "5000-digit-range", "superscript-range", "superscript-gpus", "5000-digit-gpus", "2000-gpus"])
def test_from_slurm_absurd_input_is_one_line(monkeypatch, slurm, args, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc, out, err = run_cli("hostfile", "from-slurm", *args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and match in err and len(err) < 400, err[:400]


def test_openmpi_max_slots_is_a_warning_and_deepspeed_reads_the_slots(tmp_path):
    """`host slots=4 max_slots=8` (OpenMPI syntax): DeepSpeed 0.19.8's own parser starts 4 ranks there; we
    accept it with one warning per line and the same slots."""
    runner = pytest.importorskip("deepspeed.launcher.runner")
    path = tmp_path / "hf"
    path.write_text("w0 slots=4 max_slots=8\nw1\tslots=4\tmax_slots=8 # rack B\nw2 slots=4\n")
    hf = read_hostfile(path)
    assert [(h.name, h.slots) for h in hf.hosts] == [("w0", 4), ("w1", 4), ("w2", 4)]
    assert list(runner.fetch_hostfile(str(path)).items()) == [("w0", 4), ("w1", 4), ("w2", 4)]
    assert hf.warnings == (
        f"{path} line 1: max_slots=8 is OpenMPI syntax; DeepSpeed ignores it and starts slots=4 ranks on w0",
        f"{path} line 2: max_slots=8 is OpenMPI syntax; DeepSpeed ignores it and starts slots=4 ranks on w1")
    assert read_hostfile(HOSTFILES / "localhost").warnings == ()


def test_hostfile_check_cli_warns_on_max_slots(tmp_path):
    path = tmp_path / "hf"
    path.write_text("w0 slots=4 max_slots=8\nw1 slots=4\n")
    rc, out, err = run_cli("hostfile", "check", str(path))
    assert rc == 0 and "2 x 4 = world size 8" in out
    assert "line 1: max_slots=8 is OpenMPI syntax; DeepSpeed ignores it and starts slots=4 ranks on w0" in err
    rc, out, _ = run_cli("hostfile", "check", str(path), "--json")
    assert rc == 0 and len(json.loads(out)["warnings"]) == 1
