"""The ``yoloserve`` command: one sub-command per job, each defined by the package that does it.

Sub-commands import their heavy parts only when they run, so ``yoloserve lb`` and
``yoloserve detect`` start fast on the light install (no torch, OpenCV or Ultralytics).
``yoloserve bench`` is ``bench``'s, which the wheel does not ship: it is looked up only when asked
for, in a checkout, and an installed copy says so in one line.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import click

from clients.cli import detect_command, track_command
from loadbalancer.cli import lb_command
from service.cli import export_command, monitor_command, serve_command, train_demo_command
from service.evaluate_cmd import evaluate_command

__all__ = ["main"]

NO_BENCH = ("the benchmarks run from a checkout of the project: `yoloserve bench ...` or "
            "`python -m bench ...` in a clone of its repository (the installed package has no bench/)")


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               add_help_option=False)
def _no_bench() -> None:
    """Benchmarks: run from a checkout of the project (see bench/README.md)."""
    raise click.ClickException(NO_BENCH)


def _checkout() -> Path | None:
    """The checkout whose ``bench/`` runs: where an importable ``bench`` lies, else where this
    package lies if ``bench/`` is beside it (an editable install maps only the shipped packages);
    None in an installed copy."""
    spec = importlib.util.find_spec("bench")
    if spec is not None and spec.origin is not None:
        return Path(spec.origin).resolve().parents[1]
    here = Path(__file__).resolve().parents[1]
    return here if (here / "bench" / "__main__.py").is_file() else None


def _bench_command() -> click.Command:
    """``bench``'s own command, with its checkout on the path (``bench`` imports ``harness``,
    which sits beside it); ``_no_bench`` without a checkout."""
    checkout = _checkout()
    if checkout is None:
        return _no_bench
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from bench.cli import bench_command

    return bench_command


class _Commands(click.Group):
    """The sub-commands, ``bench`` among them, loaded only when named or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "bench"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "bench":
            return _bench_command()
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="yoloserve")
def main() -> None:
    """yoloserve: YOLO object detection served over HTTP, with a load balancer and a client."""


main.add_command(serve_command, "serve")
main.add_command(lb_command, "lb")
main.add_command(detect_command, "detect")
main.add_command(track_command, "track")
main.add_command(export_command, "export")
main.add_command(evaluate_command, "evaluate")
main.add_command(train_demo_command, "train-demo")
main.add_command(monitor_command, "monitor")
