"""Sub-commands of ``yoloserve`` that need the server stack: serve, export, bench, train-demo.

Heavy imports happen inside the commands, so ``yoloserve lb`` and ``yoloserve detect`` start fast
on the light install.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["bench_command", "export_command", "serve_command", "train_demo_command"]


def _overrides(**given: Any) -> dict[str, Any]:
    """Only the flags the user typed: the environment supplies the rest."""
    return {k: v for k, v in given.items() if v is not None}


@click.command(context_settings={"show_default": True})
@click.option("--host", default=None, help="Address to bind [env YOLOSERVE_HOST; 127.0.0.1]")
@click.option("--port", type=int, default=None, help="Port [env YOLOSERVE_PORT; 8000]")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Weights (.pt) or ONNX model [default: models/demo.pt]")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx"]), default=None)
@click.option("--device", default=None, help="auto, cpu or cuda:N")
@click.option("--half/--no-half", default=None, help="FP16 on CUDA [default: on with CUDA]")
@click.option("--max-batch-size", type=int, default=None, help="[8]")
@click.option("--max-wait-ms", type=float, default=None, help="[5]")
@click.option("--workers", type=int, default=None, help="Processes; >1 runs gunicorn [1]")
@click.option("--log-format", type=click.Choice(["json", "text"]), default=None)
def serve_command(**flags: Any) -> None:
    """Run the detection service."""
    from service.settings import Settings

    settings = Settings(**_overrides(**flags))
    if settings.workers > 1:
        _exec_gunicorn(settings)
    from service.server import run

    run(settings)


def _exec_gunicorn(settings: Any) -> None:
    """Hand over to gunicorn; settings travel as YOLOSERVE_* environment variables."""
    for name, value in settings.model_dump(exclude={"api_keys"}).items():
        if value is not None:
            os.environ[f"YOLOSERVE_{name.upper()}"] = str(value)
    # the master holds the port, so a worker takes connections only once its model is ready
    if settings.cores is None:  # N workers share the cores instead of each taking them all
        os.environ["YOLOSERVE_CORES"] = str(max(1, (os.cpu_count() or 1) // settings.workers))
    os.environ["YOLOSERVE_LOAD_IN_BACKGROUND"] = "false"
    conf = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
    args = [sys.executable, "-m", "gunicorn", "-c", str(conf), "service.app:create_app()"]
    os.execv(sys.executable, args)


@click.command(context_settings={"show_default": True})
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


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
               add_help_option=False)  # --help goes to the scenario's own parser
@click.argument("scenario", required=False, default="list")
@click.pass_context
def bench_command(ctx: click.Context, scenario: str) -> None:
    """Run a benchmark scenario from bench/ (see bench/README.md); `list` shows them."""
    from bench.__main__ import main as bench_main

    raise SystemExit(bench_main([scenario, *ctx.args]))


@click.command()
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
