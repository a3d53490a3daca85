"""The service's sub-commands of ``yoloserve``: serve, export and train-demo.

``serve`` has one option per field of :class:`service.settings.Settings`. Heavy imports happen
inside the commands, so the console entry point starts fast on the light install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from service.settings import Settings
from wire.options import given_options, settings_options

__all__ = ["export_command", "serve_command", "train_demo_command"]


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@settings_options(Settings, skip={"api_keys"})  # keys stay out of the process list: env only
def serve_command(**flags: Any) -> None:
    """Run the detection service."""
    settings = Settings(**given_options(flags))
    if settings.workers > 1:
        _exec_gunicorn(settings)
    from service.server import run

    run(settings)


def _exec_gunicorn(settings: Settings) -> None:
    """Hand over to gunicorn; settings travel as YOLOSERVE_* environment variables."""
    for name, value in settings.model_dump(exclude={"api_keys"}).items():
        if isinstance(value, SecretStr):  # a Redis URL with its password
            value = value.get_secret_value()
        if value is not None:
            os.environ[f"YOLOSERVE_{name.upper()}"] = str(value)
    # the master holds the port, so a worker takes connections only once its model is ready
    if settings.cores is None:  # N workers share the cores instead of each taking them all
        os.environ["YOLOSERVE_CORES"] = str(max(1, (os.cpu_count() or 1) // settings.workers))
    os.environ["YOLOSERVE_LOAD_IN_BACKGROUND"] = "false"
    from service.resources import gunicorn_config

    args = [sys.executable, "-m", "gunicorn", "-c", gunicorn_config(), "service.app:create_app()"]
    os.execv(sys.executable, args)


@click.command("export", context_settings={"show_default": True})
@click.option("--model", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx")
@click.option("--half", is_flag=True, help="Also write an FP16 copy (for GPUs)")
@click.option("--int8", is_flag=True, help="Also write a dynamically quantised INT8 copy (CPUs)")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="ONNX path")
@click.option("--check-images", type=int, default=100, help="Validation images for parity/mAP")
def export_command(model: Path, fmt: str, half: bool, int8: bool, out: Path | None,
                   check_images: int) -> None:
    """Export weights to ONNX and check parity and mAP against the source model."""
    from service.engine.export import export_and_check

    report = export_and_check(model, out=out, half=half, int8=int8, check_images=check_images)
    click.echo(report.to_markdown())
    if not report.ok:
        raise SystemExit(1)


@click.command("train-demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("models"))
@click.option("--hours", type=float, default=None, help="Training time cap [0.72]")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
def train_demo_command(out: Path, hours: float | None, workdir: Path | None) -> None:
    """Regenerate the synthetic data set and retrain the demo model (CPU)."""
    from dataclasses import replace

    from service.demo.train import TrainConfig, train_demo

    cfg = TrainConfig(out=out)
    if hours is not None:
        cfg = replace(cfg, hours=hours)
    if workdir is not None:
        cfg = replace(cfg, workdir=workdir)
    click.echo(train_demo(cfg))
