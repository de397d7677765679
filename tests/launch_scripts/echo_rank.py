"""Entry for the remote-shell tests: writes what this rank really received (its arguments and its
environment) to $PROBE_OUT/rank-<RANK>.json. No torch, so a 2-"node" launch takes seconds."""

import json
import os
import sys

args = sys.argv[1:]
if args and args[0].startswith("--local_rank="):  # added by the rank wrapper, as DeepSpeed does for scripts
    args = args[1:]
rank = next((os.environ[v] for v in ("RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID") if v in os.environ), "0")
out = os.path.join(os.environ["PROBE_OUT"], f"rank-{rank}.json")
with open(out, "w", encoding="utf-8") as fh:
    json.dump({"argv": args, "env": dict(os.environ)}, fh, ensure_ascii=True)
