"""The service's sub-commands of ``yoloserve``: serve, export and train-demo.

``serve`` has one option per field of :class:`service.settings.Settings`. Heavy imports happen
inside the commands, so the console entry point starts fast on the light install.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import SecretStr

from service.settings import Settings
from wire.options import given_options, settings_options

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["export_command", "monitor_command", "serve_command", "train_demo_command"]


_MODEL_OPTION = click.option(
    "--model", "model", multiple=True, metavar="[NAME=]PATH",
    help="A model to serve, repeatable: NAME=PATH, or a bare PATH named by its file; the first "
         "is the default. [env: YOLOSERVE_MODEL (one path), YOLOSERVE_MODELS (a JSON list)]")


def _model_flags(given: tuple[str, ...]) -> dict[str, Any]:
    """One bare ``--model PATH`` is today's single model; anything else is the list of models."""
    if not given:
        return {}
    if len(given) == 1 and "=" not in given[0]:
        return {"model": Path(given[0])}
    return {"models": list(given)}


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
# keys stay out of the process list (env only); --model covers `models`
@settings_options(Settings, skip={"api_keys", "models"}, special={"model": _MODEL_OPTION})
def serve_command(**flags: Any) -> None:
    """Run the detection service."""
    from service.modelspec import ModelConfigError, resolve_specs

    models = _model_flags(flags.pop("model", ()))
    settings = Settings(**given_options(flags), **models)
    try:  # a wrong model list, or a precision this machine lacks, stops here, before the port opens
        specs, _ = resolve_specs(settings.model, settings.models, settings.model_alias)
        _check_precisions(settings, [spec.path for spec in specs])
    except (ModelConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if settings.workers > 1:
        _exec_gunicorn(settings)
    from service.server import run

    run(settings)


def _check_precisions(settings: Settings, models: list[Path]) -> None:
    """Refuse a precision (or a backend's file) that this hardware or these models lack."""
    from service.engine import ModelLoadError
    from service.engine.engine import check_precision
    from service.runtime.compute import plan_compute

    for model in models:
        try:
            plan = plan_compute(settings, model)
            check_precision(plan.precision, plan.device, plan.backend)
        except ModelLoadError as exc:
            raise ValueError(str(exc)) from exc


def _exec_gunicorn(settings: Settings) -> None:
    """Hand over to gunicorn; settings travel as YOLOSERVE_* environment variables."""
    for name, value in settings.model_dump(exclude={"api_keys"}).items():
        if isinstance(value, SecretStr):  # a Redis URL with its password
            value = value.get_secret_value()
        if value is not None:
            os.environ[f"YOLOSERVE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, list) else str(value))
    # the master holds the port, so a worker takes connections only once its model is ready
    if settings.cores is None:  # N workers share the cores instead of each taking them all
        os.environ["YOLOSERVE_CORES"] = str(max(1, (os.cpu_count() or 1) // settings.workers))
    os.environ["YOLOSERVE_LOAD_IN_BACKGROUND"] = "false"
    from service.resources import gunicorn_config

    args = [sys.executable, "-m", "gunicorn", "-c", gunicorn_config(), "service.app:create_app()"]
    os.execv(sys.executable, args)


@click.command("export", context_settings={"show_default": True})
@click.option("--model", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--format", "fmt", type=click.Choice(["onnx", "triton", "openvino"]), default="onnx",
              help="onnx: an ONNX file, checked against the source; triton: a Triton model "
                   "repository (DIR/NAME/config.pbtxt, DIR/NAME/1/model.onnx); openvino: an IR "
                   "(DIR/STEM.xml, .bin, metadata.yaml)")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "int8"]), default="fp32",
              help="openvino: int8 quantizes (NNCF) on --calibration images; bf16 is chosen at "
                   "run time over the FP32 IR")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="openvino int8: a folder of images like those served "
                                 "[the demo's synthetic training images]")
@click.option("--calibration-images", type=click.IntRange(1), default=300,
              help="openvino int8: images to calibrate on at most")
@click.option("--half", is_flag=True, help="Also write an FP16 copy (for GPUs)")
@click.option("--int8", is_flag=True, help="Also write a dynamically quantised INT8 copy (CPUs)")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="ONNX path; with --format triton the repository's folder [triton-models]")
@click.option("--check-images", type=int, default=100, help="Validation images for parity/mAP")
@click.option("--name", default=None, help="triton: the model's name [the file's stem]")
@click.option("--max-batch-size", type=click.IntRange(1, 1024), default=8, help="triton")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=5.0,
              help="triton: dynamic batching's queue delay")
@click.option("--instances", type=click.IntRange(1), default=1, help="triton: model instances")
@click.option("--gpu", is_flag=True, help="triton: instances on GPUs (KIND_GPU)")
@click.option("--tensorrt-fp16", is_flag=True,
              help="triton: run the ONNX model through TensorRT in FP16 (implies --gpu)")
def export_command(model: Path, fmt: str, precision: str, calibration: Path | None,
                   calibration_images: int, half: bool, int8: bool, out: Path | None,
                   check_images: int, name: str | None, max_batch_size: int, max_wait_ms: float,
                   instances: int, gpu: bool, tensorrt_fp16: bool) -> None:
    """Export weights to ONNX and check parity and mAP against the source model, write a
    Triton model repository, or an OpenVINO IR (INT8 by post-training quantization)."""
    if fmt == "openvino":
        _export_openvino(model, precision, calibration, calibration_images, out, check_images)
        return
    if fmt == "triton":
        from service.engine.export import TritonOptions, export_triton

        options = TritonOptions(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                instances=instances, gpu=gpu, tensorrt_fp16=tensorrt_fp16)
        try:
            config = export_triton(model, out or Path("triton-models"), name=name, options=options)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {config} and {config.parent / '1' / 'model.onnx'}")
        return
    from service.demo.export_check import export_and_check

    report = export_and_check(model, out=out, half=half, int8=int8, check_images=check_images)
    click.echo(report.to_markdown())
    if not report.ok:
        raise SystemExit(1)


def _export_openvino(model: Path, precision: str, calibration: Path | None, images: int,
                     out: Path | None, check_images: int) -> None:
    """Write the IR, then say how closely it follows FP32 on generated images."""
    from service.demo.synthetic import training_images
    from service.engine import Engine, ModelLoadError
    from service.engine.evaluation import agreement
    from service.engine.export import detect_all
    from service.engine.openvino_export import export_openvino, images_in

    def calibration_images(count: int) -> Iterator[NDArray[np.uint8]]:
        return training_images(count) if calibration is None else images_in(calibration, count)

    try:
        xml = export_openvino(model, precision=precision, out=out,
                              calibration=calibration_images(images) if precision == "int8" else ())
        served = Engine.load(xml, backend="openvino", device="cpu",
                             precision="int8" if precision == "int8" else "fp32")
    except (ModelLoadError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    reference = Engine.load(model, device="cpu")
    sample = list(calibration_images(check_images))
    matched, total = agreement(detect_all(reference, sample), detect_all(served, sample))
    click.echo(f"wrote {xml}; against FP32 on {len(sample)} images: {matched}/{total} boxes "
               f"agree (same class, IoU >= 0.9). Measure its mAP with "
               f"`yoloserve evaluate --model {model} --precision {precision}`")


@click.command("train-demo")
@click.option("--task", type=click.Choice(["detect", "segment", "pose", "obb", "classify"]),
              default="detect", show_default=True, help="Which demo model")
@click.option("--out", type=click.Path(path_type=Path), default=Path("models"))
@click.option("--hours", type=float, default=None,
              help="Training time cap [0.72 for detect, 0.3 for segment, pose and obb, 0.15 for classify]")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
def train_demo_command(task: str, out: Path, hours: float | None, workdir: Path | None) -> None:
    """Regenerate the synthetic data set and retrain a demo model (CPU)."""
    from service.demo.train import task_config, train_demo

    overrides: dict[str, object] = {"out": out}
    if hours is not None:
        overrides["hours"] = hours
    if workdir is not None:
        overrides["workdir"] = workdir
    click.echo(train_demo(task_config(task, **overrides)))  # type: ignore[arg-type]


@click.group("monitor")
def monitor_command() -> None:
    """Model monitoring: the baseline that drift is measured against."""


@monitor_command.command("baseline")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The baseline file, for `yoloserve serve --monitor-baseline FILE`")
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Weights or ONNX model [the demo model]")
@click.option("--min-conf", type=click.FloatRange(0.0, 1.0, max_open=True), default=None,
              help="Detections counted from this confidence [the service's monitor_min_conf]")
def baseline_command(images: tuple[Path, ...], out: Path, model: Path | None,
                     min_conf: float | None) -> None:
    """Detect on IMAGES (files or folders) and write the per-class baseline of drift monitoring."""
    from service.engine import Engine
    from service.engine.decode import image_files
    from service.runtime.monitoring import baseline_from_images

    settings = Settings()
    paths = image_files(images)
    if not paths:
        raise click.UsageError("no images found")
    engine = Engine.load(model or settings.model, backend=settings.backend, device=settings.device)
    conf = settings.monitor_min_conf if min_conf is None else min_conf
    baseline = baseline_from_images(engine, paths, conf)
    baseline.save(out)
    rates = ", ".join(f"{baseline.classes[c]} {h.detections_per_image():.2f}"
                      for c, h in sorted(baseline.histograms.items()))
    click.echo(f"{out}: {baseline.images} images; detections per image: {rates}")
