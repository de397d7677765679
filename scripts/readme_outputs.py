"""Keep the README's command outputs true: every fenced block after a `<!-- output: CMD -->` marker
is the real output of CMD (and its exit code when not 0).

python scripts/readme_outputs.py           rewrite README.md in place
python scripts/readme_outputs.py --check   exit 1 if any block is stale (tests/test_readme.py runs this)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- output: (?P<cmd>.+?) -->\n```\n(?P<body>.*?)```\n", re.S)


def run(cmd: str) -> str:
    argv = shlex.split(cmd)  # stdout and stderr together, as a terminal shows them
    assert argv[0] == "qwen-ds", cmd
    proc = subprocess.run([sys.executable, "-m", "qwen_ds.cli", *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=ROOT)
    out = f"$ {cmd}\n{proc.stdout}"
    if proc.returncode:
        out += f"$ echo $?\n{proc.returncode}\n"
    return out


PY_MARKER = re.compile(r"(# python api example[^\n]*\n(?P<code>.*?)```\n\n<!-- python api output -->\n```text\n)(?P<body>.*?)```",
                       re.S)


def run_python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout if proc.returncode == 0 else f"(failed: {proc.stderr.strip().splitlines()[-1]})\n"


def render(text: str) -> str:
    text = MARKER.sub(lambda m: f"<!-- output: {m['cmd']} -->\n```\n{run(m['cmd'])}```\n", text)
    # the Python API example's output block (tests/test_readme.py runs the example and compares)
    return PY_MARKER.sub(lambda m: f"{m.group(1)}{run_python(m['code'])}```", text)


def main() -> int:
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        stale = [m["cmd"] for m, n in zip(MARKER.finditer(text), MARKER.finditer(new)) if m["body"] != n["body"]]
        stale += ["python api example" for m, n in zip(PY_MARKER.finditer(text), PY_MARKER.finditer(new))
                  if m["body"] != n["body"]]
        for cmd in stale:
            print(f"stale README output: {cmd}")
        return 1 if stale else 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
