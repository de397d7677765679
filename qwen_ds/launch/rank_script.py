"""`python -u PATH/rank_script.py --payload TOKEN`: qwen_ds.launch.rank for a launcher that starts a
script FILE, not a module. DeepSpeed 0.19.8's MPICH runner starts `python -u launcher_helper.py
[--module] SCRIPT ARGS`, and with --module it runs `python -u -m /abs/path/launcher_helper.py`,
which Python refuses (no module by that name); without it, the helper runs `python -u SCRIPT ARGS`.

Standard library only until the wrapper's own imports; this file's directory is taken off sys.path
(it would shadow top-level modules) and the directory holding this qwen_ds package put first."""

import os
import sys

if __name__ == "__main__":
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))
    from qwen_ds.launch.rank import main

    sys.exit(main())
