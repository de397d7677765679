"""Read a DeepSpeed config the way DeepSpeed does: JSON, or hjson (comments, trailing commas);
duplicate keys are an error (DeepSpeed raises on them for files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError, one_line


class DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):  # the common case: one pass, no duplicate
        return out
    seen: set[str] = set()  # sets, not list.count per key: that was quadratic (100k keys took 181 s)
    dups: set[str] = set()
    for k, _ in pairs:
        (dups if k in seen else seen).add(k)
    names = sorted(dups)
    raise DuplicateKeys(", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else ""))


def parse_config_text(text: str, where: str) -> dict[str, Any]:
    """JSON first; hjson (what DeepSpeed's file loader accepts) when JSON fails."""
    try:
        cfg = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        cfg = _plain(_parse_hjson(text, where, exc))  # only hjson: json.loads builds plain dicts, ints and floats
    except DuplicateKeys as exc:
        raise InputError(f"{where}: duplicate keys {exc} (DeepSpeed refuses them); keep one of each") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a DeepSpeed config") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's digit limit
        raise InputError(f"{where}: {one_line(exc)[:120]}; a DeepSpeed config holds ordinary numbers") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: a DeepSpeed config is a JSON object, got {type(cfg).__name__}")
    return cfg


#: hjson is pure Python (16 s for 10 MB); configs with comments are hand-written and a few KiB, so a
#: bigger file that is not JSON is reported as JSON instead of parsed for minutes
HJSON_LIMIT = 2**20


def _parse_hjson(text: str, where: str, json_err: json.JSONDecodeError) -> Any:
    if len(text) > HJSON_LIMIT:
        raise InputError(f"{where} line {json_err.lineno}: malformed JSON ({json_err.msg}); fix that line "
                         f"(hjson - comments, trailing commas - is tried only up to {HJSON_LIMIT // 2**20} "
                         "MiB)") from None
    try:
        import hjson
    except ImportError:
        raise InputError(f"{where} line {json_err.lineno}: malformed JSON ({json_err.msg}); fix that line") from None
    try:
        return hjson.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKeys as exc:
        raise InputError(f"{where}: duplicate keys {exc} (DeepSpeed refuses them); keep one of each") from None
    except RecursionError:
        raise InputError(f"{where}: nested too deeply to be a DeepSpeed config") from None
    except Exception as exc:  # hjson raises HjsonDecodeError and, on odd input, other ValueErrors
        # JSON stops at the first non-JSON token (maybe a comment or trailing comma hjson allows),
        # hjson where its grammar breaks: name both when they differ
        hline = getattr(exc, "lineno", None)
        lines = f"line {json_err.lineno}" if hline in (None, json_err.lineno) else \
            f"line {json_err.lineno} as JSON ({json_err.msg}), line {hline} as hjson"
        raise InputError(f"{where} {lines}: neither JSON nor hjson ({one_line(getattr(exc, 'msg', exc))[:120]}); fix "
                         "that line") from None


def _plain(value: Any) -> Any:
    """hjson returns OrderedDicts and Decimals in places: make plain dict/list/int/float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if type(value).__name__ == "Decimal":
        f = float(value)
        return int(f) if f.is_integer() else f
    return value


def read_config(path: str | Path) -> dict[str, Any]:
    from ..fileio import read_text

    text = read_text(path, "DeepSpeed config", "pass a readable ds_config.json (UTF-8 JSON or hjson)")
    return parse_config_text(text, one_line(path))
