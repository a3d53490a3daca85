"""``yoloserve evaluate``: mAP and agreement with FP32 of a model at each precision.

Heavy imports happen inside the command, so the console entry point starts fast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from service.settings import DEFAULT_MODEL

if TYPE_CHECKING:
    from service.engine.engine import BackendName

__all__ = ["evaluate_command"]

_DEMO_SEED = 1  # the demo's held-out split (training used seed 0)


def _demo_split(model: Path, backend: BackendName, root: Path, images: int) -> Path:
    """Write the demo's held-out split under ``root``; refuse a model not trained on it."""
    from service.demo.synthetic import CLASSES, write_split
    from service.engine import Engine, ModelLoadError

    try:
        classes = Engine.load(model, backend=backend, device="cpu").meta.classes
    except ModelLoadError as exc:
        raise click.ClickException(str(exc)) from None
    if tuple(classes[i] for i in sorted(classes)) != CLASSES:
        raise click.UsageError("--data DIR is needed: the model's classes are not the demo's, so "
                               "its held-out split cannot be generated")
    data = root / f"demo-heldout-seed{_DEMO_SEED}"
    write_split(data, "val", _DEMO_SEED, images)
    return data


@click.command("evaluate", context_settings={"show_default": True})
@click.option("--model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=DEFAULT_MODEL, help="Weights (.pt), ONNX model or OpenVINO IR (.xml)")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "openvino"]), default="auto")
@click.option("--precision", "precisions", type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
              multiple=True, default=("fp32", "bf16", "int8"),
              help="Repeatable; fp32, the reference, is always measured")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A labelled folder (YOLO format) [the demo's held-out split, for the demo's classes]")
@click.option("--images", type=click.IntRange(1), default=300,
              help="Images of the generated demo split (without --data)")
@click.option("--letterbox", type=click.Choice(["square", "rect"]), default="square")
@click.option("--decode-reduce", is_flag=True,
              help="Decode large JPEGs at a reduced scale, as `serve --decode-reduce` does")
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads [all cores]")
@click.option("--no-save", is_flag=True, help="Print only; do not write <model>.evaluation.json")
def evaluate_command(model: Path, backend: str, precisions: tuple[str, ...], data: Path | None,
                     images: int, letterbox: str, decode_reduce: bool, threads: int | None,
                     no_save: bool) -> None:
    """Measure mAP50, mAP50-95 and box agreement with FP32 of MODEL at each precision."""
    from service.engine import ModelLoadError
    from service.engine.evaluation import DatasetError, evaluate, save, to_markdown

    kind = cast("BackendName", backend)
    with tempfile.TemporaryDirectory() as tmp:
        folder = data or _demo_split(model, kind, Path(tmp), images)
        try:
            result = evaluate(model, folder, list(precisions), backend=kind, threads=threads,
                              rect=letterbox == "rect", decode_reduce=decode_reduce)
        except (DatasetError, ModelLoadError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(to_markdown(result))
    if not no_save:
        try:
            click.echo(f"saved to {save(result, model)}")
        except OSError as exc:
            raise click.ClickException(f"could not save the evaluation: {exc}") from None
