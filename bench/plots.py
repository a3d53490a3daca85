"""matplotlib figures of the benchmark results (PNG, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["batch_histograms", "grouped_bars", "latency_vs_load", "line_panels", "save_figure",
           "throughput_vs_concurrency"]

_DPI = 110


def save_figure(fig: Figure, path: Path) -> Path:
    """Lay ``fig`` out, write it to ``path`` (PNG) and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def throughput_vs_concurrency(series: Mapping[str, Sequence[tuple[float, float]]], path: Path,
                              title: str, hlines: Mapping[str, float] | None = None,
                              xlabel: str = "concurrent clients (closed loop)",
                              ylabel: str = "images/s (HTTP 200)") -> Path:
    """One line per configuration: images/s (y) against concurrent clients (x, log2), or
    against another power-of-two axis named by ``xlabel`` (batch size)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
        ax.plot(xs, ys, marker="o", label=label)
    for i, (label, y) in enumerate((hlines or {}).items()):
        ax.axhline(y, linestyle=":", color=f"C{len(series) + i}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def line_panels(panels: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]], path: Path,
                title: str, xlabel: str, ylabel: str) -> Path:
    """Side by side panels (e.g. stages of the engine), each a line per series (e.g. backend and
    precision) of y against x (log2); a series keeps its colour in every panel."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False, sharey=True)
    colours: dict[str, str] = {}
    for ax, (panel, series) in zip(axes[0], panels.items(), strict=False):
        for label, points in series.items():
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            xs, ys = zip(*sorted(points), strict=True) if points else ((), ())
            ax.plot(xs, ys, marker="o", color=colour, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(panel)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def latency_vs_load(series: Mapping[str, Sequence[tuple[float, float, float, float]]],
                    path: Path, title: str) -> Path:
    """Per configuration, p50/p95/p99 (ms, log y) against offered load (requests/s, open loop).

    Each point is ``(offered_rps, p50, p95, p99)``.
    """
    fig, ax = plt.subplots(figsize=(10, 4.8))
    for i, (label, points) in enumerate(series.items()):
        pts = sorted(points)
        if not pts:
            continue
        xs = [p[0] for p in pts]
        colour = f"C{i}"
        ax.plot(xs, [p[3] for p in pts], marker="o", color=colour, label=f"{label} p99")
        ax.plot(xs, [p[2] for p in pts], marker=".", color=colour, linestyle="--",
                label=f"{label} p95")
        ax.plot(xs, [p[1] for p in pts], marker="x", color=colour, linestyle=":",
                label=f"{label} p50")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s, Poisson arrivals)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def batch_histograms(panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path,
                     title: str) -> Path:
    """Panels (e.g. saturation, 50 % load) of grouped bars: batches per size bucket per config."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4), squeeze=False)
    for ax, (panel, configs) in zip(axes[0], panels.items(), strict=False):
        buckets: list[str] = []
        for hist in configs.values():
            buckets += [b for b in hist if b not in buckets]
        width = 0.8 / max(len(configs), 1)
        for i, (label, hist) in enumerate(configs.items()):
            total = sum(hist.values()) or 1.0
            xs = [j + i * width for j in range(len(buckets))]
            ax.bar(xs, [100 * hist.get(b, 0.0) / total for b in buckets], width, label=label)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(buckets))], buckets)
        ax.set_xlabel("images per forward pass")
        ax.set_ylabel("% of batches")
        ax.set_title(panel)
        ax.grid(True, axis="y", alpha=0.3)
        if configs:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def grouped_bars(groups: Mapping[str, Mapping[str, float]], path: Path, title: str,
                 ylabel: str, legend_y: float = -0.08) -> Path:
    """Groups on x (e.g. concurrency), one bar per series within each group; the legend below
    the axes, ``legend_y`` down (lower for group names of two lines)."""
    names: list[str] = []
    for series in groups.values():
        names += [s for s in series if s not in names]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(groups))]
        ys = [g.get(name, 0.0) for g in groups.values()]
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, legend_y), ncol=len(names))
    return save_figure(fig, path)
