"""`qwen-ds` entry point: a click group whose subcommands load lazily (one module each), so that
`--help` and the estimate path import neither torch nor the other commands."""

from __future__ import annotations

import importlib
import signal
import sys

import click

from . import __version__
from .errors import EXIT_BAD_INPUT, QwenDsError, one_line

COMMANDS = {
    "models": ("qwen_ds.commands.cmd_models", "List model presets with total and active parameters."),
    "gpus": ("qwen_ds.commands.cmd_gpus", "List the GPU catalog (memory, compute capability, TFLOP/s, bandwidths)."),
    "estimate": ("qwen_ds.commands.cmd_estimate", "Memory per GPU and per node for one plan, term by term."),
    "plan": ("qwen_ds.commands.cmd_plan",
             "Fastest plans that fit, ranked by a step-time model; rejected families and why."),
    "gen-config": ("qwen_ds.commands.cmd_gen_config", "Render a validated ds_config.json and plan.json for a plan."),
    "hostfile": ("qwen_ds.commands.cmd_hostfile", "Check a DeepSpeed hostfile, or write one from a Slurm allocation."),
    "launch": ("qwen_ds.commands.cmd_launch",
               "Launch train / infer / your script with DeepSpeed's launcher across a hostfile."),
    "validate": ("qwen_ds.commands.cmd_validate",
                 "Check a DeepSpeed config: schema, rules, DeepSpeed's parser, memory."),
    "doctor": ("qwen_ds.commands.cmd_doctor",
               "What this machine can run: versions, GPUs, interconnect, limits, backends."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # short help from the table above: listing commands must not import them
        with formatter.section("Commands"):
            formatter.write_dl([(name, helptext) for name, (_, helptext) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="qwen-ds")
def cli() -> None:
    """Plan, size and launch DeepSpeed jobs for Qwen3 / Qwen3-MoE / Qwen3-Next and HF decoder models.

    Offline, no GPU needed: `qwen-ds estimate --model Qwen3-Next-80B-A3B --gpu A100-80GB --nodes 2 --gpus-per-node 8`
    """


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; project errors become a one-line message and their exit code, never a traceback."""
    try:
        _run(argv)
    finally:
        if argv is None:  # a qwen-ds process of its own, not a caller's in-process run: the work is done (or
            # given up), so a Ctrl-C during interpreter shutdown can change nothing and must not print a traceback
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(argv: list[str] | None) -> None:
    try:
        rc = cli.main(args=argv, prog_name="qwen-ds", standalone_mode=False)
    except QwenDsError as exc:
        if exc.detail:
            click.echo(exc.detail, err=True)
        click.echo(f"error: {one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.UsageError as exc:  # one line, like every other bad input, naming where help is
        where = (f"qwen-ds {exc.ctx.command_path.split(' ', 1)[1]} --help" if exc.ctx and " " in exc.ctx.command_path
                 else "qwen-ds --help")
        click.echo(f"error: {one_line(exc.format_message())} (see {where})", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_BAD_INPUT)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
