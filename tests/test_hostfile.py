"""Hostfile parsing: DeepSpeed's rules plus ours, each error naming file and line."""

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
    ("w0 slots=8 max_slots=8\n", 1, "only a '# comment'"),
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
