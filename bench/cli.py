"""``yoloserve bench SCENARIO``: the benchmark programs of :mod:`bench` (see bench/README.md)."""

from __future__ import annotations

import click

__all__ = ["bench_command"]


@click.command("bench", context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               add_help_option=False)  # --help goes to the scenario's own parser
@click.argument("scenario", required=False, default="list")
@click.pass_context
def bench_command(ctx: click.Context, scenario: str) -> None:
    """Run a benchmark scenario (see bench/README.md); `list` shows them."""
    from bench.__main__ import main as bench_main

    raise SystemExit(bench_main([scenario, *ctx.args]))
