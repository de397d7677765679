"""Launch DeepSpeed jobs across a hostfile: build (argv, env) as data, check, then run."""

from .build import LAUNCHERS, LaunchRequest, LaunchSpec, build

__all__ = ["LAUNCHERS", "LaunchRequest", "LaunchSpec", "build"]
