"""The streams benchmark's goal, from rows: 2x the baseline's frames/s with a lower p99, met by
any transport of ours that meets it; the ceiling and the frame rate the goal needs reported."""

from __future__ import annotations

import argparse
from typing import Any

from bench.streams import BASELINE, summary

ARGS = argparse.Namespace(goal_streams=16)


def _row(system: str, n: int, fps: float, p99: float, held: bool = False) -> dict[str, Any]:
    return {"system": system, "streams": n, "total_fps": fps, "p99_ms": p99, "held": held}


def test_a_transport_that_meets_the_goal_is_the_one_reported() -> None:
    rows = [_row("ours (A)", 16, 30.0, 500.0), _row("ours (B)", 16, 25.0, 100.0),
            _row(BASELINE, 16, 10.0, 300.0)]
    goal = summary(rows, [], ARGS)["goal"]
    assert (goal["system"], goal["met"], goal["fps_ratio"]) == ("ours (B)", "met", 2.5)
    assert goal["needed_fps"] == 20.0 and "forward_ceiling_ips" not in goal


def test_not_met_reports_the_highest_ratio_and_the_ceiling() -> None:
    rows = [_row("ours (A)", 16, 15.0, 100.0, held=True), _row("ours (A)", 4, 4.0, 50.0, held=True),
            _row("ours (B)", 16, 18.0, 400.0), _row(BASELINE, 16, 10.0, 300.0),
            _row(BASELINE, 4, 4.0, 40.0, held=True)]
    ceiling = [{"forward_ips": 12.0}, {"forward_ips": 17.5}]
    summ = summary(rows, ceiling, ARGS)
    goal = summ["goal"]
    assert (goal["system"], goal["met"], goal["fps_ratio"]) == ("ours (B)", "NOT met", 1.8)
    assert goal["forward_ceiling_ips"] == 17.5
    assert summ["most_streams_held"] == {"ours (A)": 16, "ours (B)": 0, "baseline": 4}
    assert {(r["system"], r["streams"]) for r in summ["ratios"]} == {
        ("ours (A)", 16), ("ours (A)", 4), ("ours (B)", 16)}


def test_no_baseline_at_the_goal_count_is_not_run() -> None:
    goal = summary([_row("ours (A)", 16, 15.0, 100.0)], [], ARGS)["goal"]
    assert goal["met"] == "not run" and goal["fps_ratio"] is None
