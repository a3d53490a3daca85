"""What the ``detect`` command shows: one JSON line per image, a progress bar, a summary."""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text

from clients._many import ItemError, ItemResult, Progress

__all__ = ["RunStats", "json_line", "percentile", "progress_bar"]


def json_line(outcome: ItemResult | ItemError) -> str:
    """The output line of one image: its result plus ``path``, or ``{"path", "error"}``."""
    path = str(outcome.input)
    if isinstance(outcome, ItemResult):
        record = {"path": path, **outcome.result.model_dump(mode="json")}
    else:
        record = {"path": path, "error": outcome.error.to_dict()}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def percentile(values: array[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class RunStats:
    """Counts and latencies of one run (latencies in a compact array: 8 bytes an image)."""

    images: int = 0
    detections: int = 0
    failures: int = 0
    elapsed_s: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def add(self, outcome: ItemResult | ItemError) -> None:
        self.images += 1
        self.latencies.append(outcome.latency_s)
        if isinstance(outcome, ItemResult):
            self.detections += outcome.result.detection_count
        else:
            self.failures += 1

    def summary(self) -> str:
        rate = self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0
        p50 = percentile(self.latencies, 50) * 1000
        p95 = percentile(self.latencies, 95) * 1000
        return (
            f"images: {self.images}  detections: {self.detections}  failures: {self.failures}  "
            f"latency p50: {p50:.1f} ms  p95: {p95:.1f} ms  "
            f"throughput: {rate:.1f} images/s  elapsed: {self.elapsed_s:.2f} s"
        )


class _RateColumn(ProgressColumn):
    """Items (images, frames) per second, as rich measures it over its recent samples."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"-- {self.unit}/s" if speed is None else f"{speed:.1f} {self.unit}/s",
            style="progress.data.speed",
        )


class _Bar:
    def __init__(self, progress: RichProgress | None, total: int | None, what: str) -> None:
        self._progress = progress
        self._task = progress.add_task(what, total=total, failed=0) if progress else None

    def update(self, state: Progress) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=state.completed, failed=state.failed)


@contextmanager
def progress_bar(
    console: Console,
    *,
    enabled: bool,
    total: int | None,
    what: str = "detect",
    unit: str = "img",
) -> Iterator[_Bar]:
    """A rich bar with count, rate (``unit``/s) and ETA on ``console``; a no-op one when not
    ``enabled``."""
    if not enabled:
        yield _Bar(None, None, what)
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(unit),
        TextColumn("failed: {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with RichProgress(*columns, console=console, transient=False) as progress:
        yield _Bar(progress, total, what)
