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


def render(text: str) -> str:
    return MARKER.sub(lambda m: f"<!-- output: {m['cmd']} -->\n```\n{run(m['cmd'])}```\n", text)


def main() -> int:
    path = ROOT / "README.md"
    text = path.read_text(encoding="utf-8")
    new = render(text)
    if "--check" in sys.argv:
        stale = [m["cmd"] for m, n in zip(MARKER.finditer(text), MARKER.finditer(new)) if m["body"] != n["body"]]
        for cmd in stale:
            print(f"stale README output: {cmd}")
        return 1 if stale else 0
    path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
