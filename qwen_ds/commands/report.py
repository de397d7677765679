"""Printing validation problems (shared by gen-config and validate)."""

from __future__ import annotations

import click

from ..validate import Problem


def echo_problems(problems: list[Problem], source: str) -> None:
    for p in problems:
        click.echo(f"{source}: {p.severity}: {p.path}: {p.message} [{p.rule}]", err=True)


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
