"""setup.cfg lists packages by hand (templates/ is mapped into the wheel): keep the list complete."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "qwen_ds").rglob("__init__.py")
    }
    assert on_disk | {"qwen_ds.templates"} == listed
