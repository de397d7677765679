"""`qwen-ds plan --chart FILE`: the format from the suffix (png without one), checked before the
search; no overwrite without --force; every refusal one line, exit 2, nothing written."""

from __future__ import annotations

import pytest

from helpers import run_cli

pytest.importorskip("matplotlib")

PLAN = ["plan", "-m", "Qwen3-8B", "-g", "H100-SXM", "--nodes", "1", "--gpus-per-node", "8", "--top", "2"]
PNG = b"\x89PNG\r\n\x1a\n"


def chart(path, *extra):
    return run_cli(*PLAN, "--chart", str(path), *extra)


def one_line_error(rc: int, out: str, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert out == ""  # refused before the search printed its table
    return lines[0]


def test_unsupported_format_is_refused_before_the_search(tmp_path):
    line = one_line_error(*chart(tmp_path / "chart.txt"))
    assert "matplotlib cannot write .txt files" in line and ".png" in line and ".svg" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,magic", [("c.png", PNG), ("c.svg", b"<?xml"), ("c.pdf", b"%PDF"), ("c.PNG", PNG), ("chart", PNG)])
def test_format_from_the_suffix_written_at_exactly_that_name(tmp_path, name, magic):
    rc, _, err = chart(tmp_path / name)
    assert rc == 0, err
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no ".png" appended, no temp file left
    assert (tmp_path / name).read_bytes().startswith(magic)


def test_existing_file_needs_force(tmp_path):
    png = tmp_path / "c.png"
    png.write_bytes(b"mine")
    line = one_line_error(*chart(png))
    assert f"{png} already exists; pass --force" in line
    assert png.read_bytes() == b"mine"
    rc, _, err = chart(png, "--force")
    assert rc == 0, err
    assert png.read_bytes().startswith(PNG) and [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_chart_into_a_missing_directory(tmp_path):
    line = one_line_error(*chart(tmp_path / "nodir" / "c.png"))
    assert "is not a directory" in line


def test_chart_over_a_directory(tmp_path):
    (tmp_path / "c.png").mkdir()
    rc, out, err = chart(tmp_path / "c.png", "--force")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
