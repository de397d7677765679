"""The README stays true: its test command is what CI runs, its outputs are current, its CI example works."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command():
    second_line = README.split("```bash\n", 1)[1].splitlines()[1]
    test_cmd = second_line.split("&&")[-1].strip()
    assert test_cmd == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0" in ci and re.search(r"^python -m pytest -q$", ci, re.M)
    assert 'pip install -e ".[test]"' in ci
    # the linter runs before the tests, with pyproject.toml's settings
    assert ci.index("python -m ruff check qwen_ds") < ci.index("python -m pytest -q")


def test_readme_outputs_are_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_outputs.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_gating_example_runs(tmp_path):
    block = README.split("# a CI step:", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    script = "set -e\n" + block.replace("qwen-ds ", f"{sys.executable} -m qwen_ds.cli ")
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("report.json", "mem.json"):
        (ROOT / name).unlink(missing_ok=True)


def test_python_api_example_runs_and_prints_what_the_readme_shows():
    code = README.split("# python api example", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    shown = README.split("<!-- python api output -->\n```text\n", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(sorted(m for m in ('torch', 'deepspeed') "
                           "if m in sys.modules))"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown + "[]\n"  # the output shown, and no torch / deepspeed imported


def test_hf_recipes_run(tmp_path):
    block = README.split("# hf recipes", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    script = "set -e\n" + block.replace("qwen-ds ", f"{sys.executable} -m qwen_ds.cli ")
    proc = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"auto" filled as the HF Trainer will' in proc.stdout and ": ok (schema and rules)" in proc.stdout
    for d, files in (("/tmp/qwen-ds-hf", ("ds_config.json", "plan.json", "training_args.json", "llamafactory.yaml")),
                     ("/tmp/qwen-ds-acc", ("ds_config.json", "plan.json", "training_args.json"))):
        assert all((Path(d) / f).is_file() for f in files), d
