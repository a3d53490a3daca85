"""``yoloserve detect``: send files, folders and globs to the service, write JSON lines.

One line per image on stdout (or ``--out``): the ``DetectionResult`` plus ``path``, or
``{"path": ..., "error": {...}}``. A progress bar (on a terminal) and a summary go to stderr.
The exit status is 1 when any image failed. ``--url grpc://HOST:PORT[/MODEL]`` sends the images
over gRPC (the Open Inference Protocol) instead of HTTP.

``yoloserve track``: a video (or a folder or glob of frames) through one stream, one JSON line
per frame (the stream result plus ``frame``), optionally an annotated video. Streams are HTTP
only: its ``--url`` is the service's HTTP address.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import click
from rich.console import Console

from clients._base import BaseClient
from clients._client import AsyncDetectionClient, DetectOptions
from clients._grpc import AsyncGrpcDetectionClient
from clients._many import Progress
from clients._paths import count_images, iter_image_paths, missing_paths
from clients._report import RunStats, json_line, progress_bar
from clients._trackrun import (
    TrackJob,
    TrackStats,
    count_frames,
    default_stream_id,
    is_video,
    run_track,
    source_fps,
)
from clients._video import MISSING_OPENCV, import_cv2
from clients.errors import InvalidRequest
from wire.schemas import valid_stream_id

__all__ = ["detect_command", "track_command"]


F = TypeVar("F", bound=Callable[..., Any])

# options that detect and track share
GRPC_SCHEME = "grpc://"
_URL = click.option(
    "--url",
    envvar="YOLOSERVE_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="The service or load balancer [env YOLOSERVE_URL]; detect also takes "
         "grpc://HOST:PORT[/MODEL] (the gRPC port), track needs HTTP.",
)
_OUT = click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the JSON lines to this file instead of stdout.",
)
_API_KEY = click.option("--api-key", envvar="YOLOSERVE_API_KEY",
                        help="Bearer token [env YOLOSERVE_API_KEY].")


def _thresholds(conf_default: str, item: str) -> Callable[[F], F]:
    """``--conf``, ``--iou``, ``--max-det`` and ``--classes``, in that order."""

    def apply(command: F) -> F:
        for option in reversed((
            click.option("--conf", type=click.FloatRange(0, 1),
                         help=f"Confidence threshold [service: {conf_default}]."),
            click.option("--iou", type=click.FloatRange(0, 1), help="NMS IoU threshold [service: 0.7]."),
            click.option("--max-det", type=click.IntRange(1, 1000), help=f"Most detections per {item}."),
            click.option("--classes", help="Only these classes: comma-separated ids or names."),
        )):
            command = option(command)
        return command

    return apply


@dataclass(frozen=True, slots=True)
class _Job:
    paths: tuple[str, ...]
    url: str
    concurrency: int
    ordered: bool
    max_attempts: int
    timeout: float
    api_key: str | None
    options: DetectOptions


@click.command("detect", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, required=True)
@_URL
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="Images in flight at once.",
)
@_OUT
@_thresholds(conf_default="0.25", item="image")
@click.option("--model", default=None,
              help="One of the service's models, or an alias [the service's default].")
@click.option(
    "--retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries per image after the first try (retryable failures only).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds per image, retries included.",
)
@_API_KEY
@click.option(
    "--ordered/--unordered",
    default=False,
    show_default=True,
    help="Write lines in input order (else as they finish).",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Show a progress bar [default: when stderr is a terminal].",
)
def detect_command(
    paths: tuple[str, ...],
    url: str,
    concurrency: int,
    out: Path | None,
    conf: float | None,
    iou: float | None,
    max_det: int | None,
    classes: str | None,
    model: str | None,
    retries: int,
    timeout: float,
    api_key: str | None,
    ordered: bool,
    progress: bool | None,
) -> None:
    """Detect objects in images: PATHS are files, folders (searched recursively) or globs."""
    missing = missing_paths(paths)
    if missing:
        names = ", ".join(missing)
        raise click.BadParameter(f"no such file or folder: {names}", param_hint="PATHS")
    if next(iter_image_paths(paths), None) is None:
        raise click.UsageError("no images found in PATHS")
    if url.startswith(GRPC_SCHEME) and model is None and not urlsplit(url).path.strip("/"):
        raise click.UsageError("over gRPC every call names its model: --url grpc://HOST:PORT/MODEL "
                               "or --model NAME")
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    options = DetectOptions(conf=conf, iou=iou, max_det=max_det, classes=class_list, model=model)
    job = _Job(paths, url, concurrency, ordered, retries + 1, timeout, api_key, options)
    console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    stream = out.open("w", encoding="utf-8") if out else None
    try:
        stats = _run_job(job, stream or sys.stdout, console, show)
    finally:
        if stream:
            stream.close()
    console.print(stats.summary(), highlight=False, soft_wrap=True)
    sys.exit(1 if stats.failures else 0)


def _run_job(job: _Job, sink: TextIO, console: Console, show: bool) -> RunStats:
    stats = RunStats()
    started = time.monotonic()
    total = count_images(job.paths) if show else None
    try:
        with progress_bar(console, enabled=show, total=total) as bar:
            asyncio.run(_detect_all(job, sink, stats, bar.update))
    except KeyboardInterrupt:
        console.print("interrupted", style="bold red")
        stats.elapsed_s = time.monotonic() - started
        console.print(stats.summary(), highlight=False, soft_wrap=True)
        sys.exit(130)
    stats.elapsed_s = time.monotonic() - started
    return stats


async def _detect_all(
    job: _Job, sink: TextIO, stats: RunStats, on_progress: Callable[[Progress], None]
) -> None:
    client: BaseClient
    if job.url.startswith(GRPC_SCHEME):  # one channel carries every call
        client = AsyncGrpcDetectionClient(job.url, timeout=job.timeout,
                                          max_attempts=job.max_attempts, api_key=job.api_key,
                                          max_concurrency=job.concurrency)
    else:
        client = AsyncDetectionClient(
            job.url,
            timeout=job.timeout,
            max_attempts=job.max_attempts,
            api_key=job.api_key,
            max_connections=job.concurrency,
            max_keepalive_connections=job.concurrency,
        )
    async with client:
        outcomes = client.detect_many(
            iter_image_paths(job.paths),
            concurrency=job.concurrency,
            ordered=job.ordered,
            on_progress=on_progress,
            **job.options,
        )
        async with aclosing(outcomes):
            async for outcome in outcomes:
                stats.add(outcome)
                sink.write(json_line(outcome) + "\n")
    sink.flush()


@click.command("track", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@_URL
@click.option("--stream-id", help="The stream's id [default: the source's name + a random suffix].")
@_OUT
@click.option(
    "--annotate",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write a video (mp4) with the boxes, labels and track ids drawn.",
)
@_thresholds(conf_default="0.1 for streams", item="frame")
@click.option("--tracker", type=click.Choice(["bytetrack", "botsort"]), help="[service: bytetrack]")
@click.option(
    "--tracker-option",
    "tracker_options",
    multiple=True,
    metavar="NAME=VALUE",
    help="A tracker setting by Ultralytics' name, e.g. track_buffer=60 (repeatable).",
)
@click.option("--rate", type=click.FloatRange(0, min_open=True), help="Send at most this many frames/s.")
@click.option(
    "--fps",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Frame rate of the annotated video for a folder of frames (a video keeps its own).",
)
@click.option("--retries", type=click.IntRange(0, 20), default=3, show_default=True,
              help="Retries per frame after the first try (retryable failures only).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=30.0,
              show_default=True, help="Seconds per frame, retries included.")
@_API_KEY
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar [default: when stderr is a terminal].")
def track_command(
    source: str,
    url: str,
    stream_id: str | None,
    out: Path | None,
    annotate: Path | None,
    conf: float | None,
    iou: float | None,
    max_det: int | None,
    classes: str | None,
    tracker: str | None,
    tracker_options: tuple[str, ...],
    rate: float | None,
    fps: float,
    retries: int,
    timeout: float,
    api_key: str | None,
    progress: bool | None,
) -> None:
    """Track objects through a video: SOURCE is a video file, or a folder or glob of frames
    (sorted by name). Needs OpenCV for a video file and for --annotate."""
    if url.startswith(GRPC_SCHEME):
        raise click.BadParameter("streams are not in the Open Inference Protocol: track needs "
                                 "the service's HTTP address (http://HOST:PORT)", param_hint="--url")
    if missing_paths([source]):
        raise click.BadParameter(f"no such file or folder: {source}", param_hint="SOURCE")
    if stream_id is not None and not valid_stream_id(stream_id):
        raise click.BadParameter("1-128 characters of [A-Za-z0-9._-]", param_hint="--stream-id")
    if (is_video(source) or annotate is not None) and not _has_opencv():
        raise click.ClickException(MISSING_OPENCV)
    if not is_video(source) and next(iter_image_paths([source]), None) is None:
        raise click.UsageError("no video or images found in SOURCE")
    class_list = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    options = {"conf": conf, "iou": iou, "max_det": max_det, "classes": class_list, "tracker": tracker}
    job = TrackJob(
        source,
        url,
        stream_id or default_stream_id(source),
        annotate,
        rate,
        retries + 1,
        timeout,
        api_key,
        options,
        _tracker_options(tracker_options),
    )
    console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    stream = out.open("w", encoding="utf-8") if out else None
    try:
        stats = _track_job(job, stream or sys.stdout, console, show, fps)
    finally:
        if stream:
            stream.close()
    console.print(f"stream: {job.stream_id}  " + stats.summary(), highlight=False, soft_wrap=True)
    sys.exit(1 if stats.failed else 0)


def _has_opencv() -> bool:
    try:
        import_cv2()
    except InvalidRequest:
        return False
    return True


def _tracker_options(pairs: tuple[str, ...]) -> dict[str, str | int | float | bool]:
    options: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--tracker-option")
        options[name.strip()] = value.strip()
    return options


def _track_job(job: TrackJob, sink: TextIO, console: Console, show: bool, fps: float) -> TrackStats:
    from clients._annotate import AnnotatedVideo

    started = time.monotonic()
    total = count_frames(job.source) if show else None
    video = AnnotatedVideo(job.annotate, source_fps(job.source, fps)) if job.annotate else None
    try:
        with progress_bar(console, enabled=show, total=total, what="track", unit="frames") as bar:
            stats = asyncio.run(run_track(job, sink, bar.update, video))
    except KeyboardInterrupt:
        console.print("interrupted", style="bold red")
        sys.exit(130)
    except InvalidRequest as exc:  # the source itself (unreadable video): nothing was sent
        raise click.ClickException(str(exc)) from exc
    finally:
        if video is not None:
            video.close()
    stats.elapsed_s = stats.elapsed_s or time.monotonic() - started
    return stats
