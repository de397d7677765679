"""What every rank runs, carried to it as ONE shell-inert argument.

DeepSpeed's multi-node runners paste the rank command into a remote shell (pdsh: `export K=V; cd DIR;
python ... ARGS` with values unquoted or in double quotes) or into mpirun/srun arguments that keep
DeepSpeed's added quotes. No quoting we could add survives all of them. So the rank wrapper's whole
job (run dir, entry, the entry's arguments, the environment from --env and our presets) travels as
base64url of JSON: its alphabet [A-Za-z0-9_=-] means the same thing to sh, pdsh's %-expansion,
mpirun -x and srun --export, and `json` restores every string byte for byte (quotes, `$()`,
backticks, newlines, unicode). Nothing of the user's is ever written to .deepspeed_env.

Standard library only: qwen_ds.launch.rank imports this on every rank before anything else.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field

FLAG = "--payload"
MODULE = "qwen_ds.launch.rank"  # the wrapper that decodes it, started by DeepSpeed on every rank
VERSION = 1
#: wall-clock time (time.time()) the job was launched: set by qwen-ds launch for the runner (local ranks inherit
#: it), else by the rank wrapper when it starts (ranks a remote shell started); the trainer reports startup from it
LAUNCH_T0 = "QWEN_DS_LAUNCH_T0"


@dataclass(frozen=True)
class RankPayload:
    run_dir: str  # where rank-<R>.json status files go
    kind: str  # builtin | module | script
    target: str  # module name or script path
    args: tuple[str, ...] = ()  # the entry's arguments, exactly as the user gave them
    env: dict[str, str] = field(default_factory=dict)  # set in every rank before the entry starts

    def encode(self) -> str:
        doc = {"v": VERSION, **asdict(self), "args": list(self.args)}
        return base64.urlsafe_b64encode(
            json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode("ascii")).decode("ascii")

    @classmethod
    def decode(cls, token: str) -> "RankPayload":
        doc = json.loads(base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii"))
        if doc.get("v") != VERSION:
            raise ValueError(f"rank payload version {doc.get('v')!r}, this qwen-ds reads {VERSION}: install the same "
                             "qwen-ds on every node")
        return cls(run_dir=doc["run_dir"], kind=doc["kind"], target=doc["target"], args=tuple(doc["args"]),
                   env=dict(doc["env"]))
