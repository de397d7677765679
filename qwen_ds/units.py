"""Byte units, defined once."""

from __future__ import annotations

GIB = 1024**3
MIB = 1024**2
