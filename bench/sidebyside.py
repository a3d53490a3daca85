"""A benchmark run for this checkout and another one, in alternating rounds, and their figures side
by side: whether a change made any of them worse.

    python -m bench sidebyside --checkout DIR [--rounds 2] SCENARIO [its arguments]

SCENARIO is ``served`` or ``streams``. Each round runs the scenario twice, as its own program:
with the other checkout's service (``YOLOSERVE_BENCH_CHECKOUT=DIR``: the same interpreter and
load generator, that checkout's packages, see ``harness.procs.Service``) and with this one's,
the other first in odd rounds and this one first in even rounds, so that a machine whose speed
drifts during the run does not favour whichever always goes first (it did: a first run of
2026-12-06 that always ran the other first had this checkout 9-12 % slower at 1-8 clients,
where the same two services measured in turn with one load generator were equal). Each run saves as
``raw/sidebyside/SCENARIO_<label>_r<N>``. The figures compared are every closed-loop point's
images/s and p99 and every open-loop point's p99 (``served``), and every (system, streams) row's
frames/s and p99 (``streams``); each is the median over the rounds, and the ratio is this / other
(images/s and frames/s: higher is better; p99: lower is better). Writes
``bench/results/sidebyside_SCENARIO.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import RESULTS, markdown_table, save
from harness.procs import ROOT

__all__ = ["figures", "main"]

SCENARIOS = ("served", "streams")
Figure = tuple[str, str, bool]  # (point, measure, higher is better)


def _git(checkout: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
    return out.stdout.strip()


def label_of(checkout: Path) -> str:
    """The checkout's commit, ``+ working tree`` when it has uncommitted changes."""
    sha = _git(checkout, "rev-parse", "--short", "HEAD") or checkout.name
    dirty = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    return f"{sha} + working tree" if dirty else sha


def figures(scenario: str, data: dict[str, Any]) -> Iterator[tuple[Figure, float]]:
    """The figures of one run's saved JSON."""
    if scenario == "served":
        for row in data["closed"]:
            point = f"{row['label']}, {row['concurrency']} clients"
            yield (point, "images/s", True), float(row["throughput"])
            yield (point, "p99 ms", False), float(row["p99_ms"])
        for row in data["open"]:
            point = f"{row['label']}, open loop at {row['fraction']:.0%} of saturation"
            yield (point, "p99 ms", False), float(row["p99_ms"])
    else:
        for row in data["rows"]:
            if not str(row["system"]).startswith("yoloserve"):
                continue  # the baseline runs no code of either checkout
            point = f"{row['system']}, {row['streams']} streams"
            yield (point, "frames/s", True), float(row["total_fps"])
            yield (point, "p99 ms", False), float(row["p99_ms"])


def _run(scenario: str, args: list[str], name: str, checkout: Path | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "YOLOSERVE_BENCH_CHECKOUT"}
    if checkout is not None:
        env["YOLOSERVE_BENCH_CHECKOUT"] = str(checkout)
    cmd = [sys.executable, "-m", "bench", scenario, *args, "--name", name]
    print(f"$ {'YOLOSERVE_BENCH_CHECKOUT=' + str(checkout) + ' ' if checkout else ''}"
          f"{' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    quick = RESULTS / f"raw/{name}_quick.json"  # where a scenario's --quick saves instead
    path = quick if "--quick" in args and quick.exists() else RESULTS / f"{name}.json"
    saved: dict[str, Any] = json.loads(path.read_text())
    return saved


def compare(scenario: str, runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per figure: the median of each checkout's rounds and this / other."""
    (other, other_runs), (this, this_runs) = runs.items()
    values: dict[Figure, dict[str, list[float]]] = {}
    for label, label_runs in ((other, other_runs), (this, this_runs)):
        for data in label_runs:
            for fig, value in figures(scenario, data):
                values.setdefault(fig, {}).setdefault(label, []).append(value)
    rows = []
    for (point, measure, higher), by in values.items():
        if other not in by or this not in by:
            continue
        a, b = statistics.median(by[other]), statistics.median(by[this])
        ratio = b / a if a else float("nan")
        worse = ratio < 0.95 if higher else ratio > 1.05
        rows.append({"point": point, "measure": measure, "other": round(a, 1), "this": round(b, 1),
                     "this / other": round(ratio, 3),
                     "reading": "worse by over 5 %" if worse else "same or better"})
    return rows


def draw(rows: list[dict[str, Any]], scenario: str) -> Path:
    """A bar per figure: this / other, with 1 marked (left of it: fewer images/s or a lower p99)."""
    import matplotlib.pyplot as plt

    from bench import plots

    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.5))
    names = [f"{r['point']}: {r['measure']}" for r in rows]
    bars = ax.barh(range(len(rows)), [r["this / other"] for r in rows],
                   color=["tab:red" if r["reading"] != "same or better" else "tab:blue" for r in rows])
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("this checkout / the other (median of the rounds)")
    ax.set_title(f"{scenario}: side by side (red: worse by over 5 %)")
    fig.tight_layout()
    return plots.save_figure(fig, RESULTS / f"sidebyside_{scenario}.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench sidebyside", description=__doc__.split("\n")[0])
    ap.add_argument("--checkout", type=Path, required=True, help="the other checkout")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("scenario", choices=SCENARIOS)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="the scenario's own arguments")
    args = ap.parse_args(argv)
    other = args.checkout.resolve()
    labels = {label_of(other): other, f"{label_of(ROOT)} (this checkout)": None}
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    for r in range(1, args.rounds + 1):
        order = list(enumerate(labels.items()))
        for i, (label, checkout) in order if r % 2 else reversed(order):
            name = f"raw/sidebyside/{args.scenario}_{'other' if i == 0 else 'this'}_r{r}"
            runs[label].append(_run(args.scenario, args.rest, name, checkout))
    rows = compare(args.scenario, runs)
    worse = [r for r in rows if r["reading"] != "same or better"]
    table = markdown_table(rows, ["point", "measure", "other", "this", "this / other", "reading"])
    (other_label, this_label) = labels
    head = (f"Other: `{other_label}` ({other}); this: `{this_label}`. `python -m bench "
            f"{args.scenario} {' '.join(args.rest)}`, {args.rounds} round(s), the other checkout "
            f"first in odd rounds, this one first in even ones; medians over the rounds. "
            f"{len(worse)} of {len(rows)} figures worse by over 5 %.\n\n")
    print(head + table)
    save(f"sidebyside_{args.scenario}", {"scenario": args.scenario, "args": args.rest,
                                        "labels": list(labels), "rounds": args.rounds,
                                        "rows": rows, "wall_s": time.monotonic() - started},
         head + table, f"Side by side: {args.scenario}, this checkout against {other_label}")
    print(f"wrote {draw(rows, args.scenario)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
