"""The ``yoloserve`` command: one sub-command per job, each defined by the package that does it.

Sub-commands import their heavy parts only when they run, so ``yoloserve lb`` and
``yoloserve detect`` start fast on the light install (no torch, OpenCV or Ultralytics).
"""

from __future__ import annotations

import click

from bench.cli import bench_command
from clients.cli import detect_command, track_command
from loadbalancer.cli import lb_command
from service.cli import export_command, monitor_command, serve_command, train_demo_command
from service.evaluate_cmd import evaluate_command

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="yoloserve")
def main() -> None:
    """yoloserve: YOLO object detection served over HTTP, with a load balancer and a client."""


main.add_command(serve_command, "serve")
main.add_command(lb_command, "lb")
main.add_command(detect_command, "detect")
main.add_command(track_command, "track")
main.add_command(export_command, "export")
main.add_command(evaluate_command, "evaluate")
main.add_command(bench_command, "bench")
main.add_command(train_demo_command, "train-demo")
main.add_command(monitor_command, "monitor")
