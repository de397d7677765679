"""Entry for the remote-shell tests: writes what this rank really received (its arguments and its
environment) to $PROBE_OUT/rank-<RANK>.json. No torch, so a 2-"node" launch takes seconds."""

import json
import os
import sys

args = sys.argv[1:]
if args and args[0].startswith("--local_rank="):  # added by the rank wrapper, as DeepSpeed does for scripts
    args = args[1:]
out = os.path.join(os.environ["PROBE_OUT"], f"rank-{os.environ.get('RANK', '0')}.json")
with open(out, "w", encoding="utf-8") as fh:
    json.dump({"argv": args, "env": dict(os.environ)}, fh, ensure_ascii=True)
