"""The two-models benchmark's arithmetic and report, without starting a service: each
configuration is the mean of its repeats, the ratios are two / one of those means (each repeat's
own ratio shown too), a ratio is never shown rounded towards its goal, and checkouts stay apart;
and ``harness.procs.Service`` from another checkout (built, not started)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bench.models import goals, loads, server_args, summarise, tables
from harness.procs import ROOT, Service


def _run(checkout: str, config: str, repeat: int, ips: float, p99: float) -> dict[str, Any]:
    per_model = ([] if config == "one" else
                 [{"url": f"/v1/models/{m}/detect", "clients": 8, "throughput": ips / 2,
                   "p50_ms": p99 / 2, "p99_ms": p99, "ok": 10, "errors": {}} for m in "ab"])
    return {"checkout": checkout, "config": config, "repeat": repeat, "concurrency": 16,
            "throughput": ips, "p50_ms": p99 / 2, "p95_ms": p99 * 0.9, "p99_ms": p99,
            "ok": int(ips * 20), "errors": {}, "cpu": {"cpu_server_pct": 190.0,
                                                      "cpu_loadgen_pct": 4.0},
            "batch": {"mean_batch": 4.5, "mean_exec_ms": 150.0}, "per_model": per_model}


def _runs() -> list[dict[str, Any]]:
    return [
        # this checkout: two/one = 97 / 100 images/s, p99 330 / 300 = 1.1 exactly
        _run("new", "one", 0, 100.0, 280.0), _run("new", "two", 0, 95.0, 300.0),
        _run("old", "one", 0, 50.0, 300.0), _run("old", "two", 0, 48.0, 390.0),
        _run("new", "one", 1, 100.0, 320.0), _run("new", "two", 1, 99.0, 360.0),
        _run("old", "one", 1, 50.0, 300.0), _run("old", "two", 1, 46.0, 380.0),
    ]


def test_each_checkout_is_the_mean_of_its_repeats_and_its_ratios_those_means() -> None:
    new, old = summarise(_runs())
    assert new["checkout"] == "new" and old["checkout"] == "old"
    assert new["one_throughput"] == 100.0 and new["two_throughput"] == 97.0
    assert new["one_p99_ms"] == 300.0 and new["two_p99_ms"] == 330.0
    assert abs(new["ratio_ips"] - 0.97) < 1e-12 and abs(new["ratio_p99"] - 1.1) < 1e-12
    assert [round(p["ratio_ips"], 3) for p in new["per_repeat"]] == [0.95, 0.99]
    assert [round(p["ratio_p99"], 4) for p in new["per_repeat"]] == [1.0714, 1.125]
    assert old["ratio_ips"] == 47.0 / 50.0 and old["ratio_p99"] == 385.0 / 300.0


def test_goals_are_met_at_the_bounds_and_never_shown_rounded_towards_them() -> None:
    rows = goals(summarise(_runs()))
    by = {(g["checkout"], g["goal"].split()[2]): g for g in rows}  # "≥" (images/s) or "p99"
    assert by[("new", "≥")]["met"] == "met" and by[("new", "≥")]["measured"] == "0.970 ×"
    assert by[("new", "p99")]["met"] == "met"  # 1.1 exactly is within the goal
    assert "each repeat (images/s / p99): 0.950 / 1.072, 0.990 / 1.125" in by[("new", "≥")]["figures"]
    # 0.94 images/s and 1.2833... p99: not met; the p99 ratio shown rounded up, not down
    assert by[("old", "≥")]["met"] == "NOT met" and by[("old", "≥")]["measured"] == "0.940 ×"
    assert by[("old", "p99")]["met"] == "NOT met" and by[("old", "p99")]["measured"] == "1.284 ×"


def test_a_missing_configuration_gives_nan_not_a_crash() -> None:
    (only,) = summarise([_run("x", "two", 0, 10.0, 100.0)])
    assert only["ratio_ips"] != only["ratio_ips"] and only["per_repeat"] == []
    (ips, p99, _) = goals([only])
    assert ips["measured"] == "nan ×" and ips["met"] == "NOT met" and p99["met"] == "NOT met"


def test_the_report_shows_the_checkouts_side_by_side_and_every_run() -> None:
    runs = _runs()
    summary = summarise(runs)
    model = Path("/m/demo.onnx")
    data = {"plan": {"seconds": 20.0, "warmup": 5.0, "repeats": 2, "clients": 16}, "images": 128,
            "server_args": {c: server_args(c, model) for c in ("one", "two")},
            "runs": runs, "summary": summary, "goals": goals(summary)}
    md = tables(data)
    assert "`yoloserve serve --model a=/m/demo.onnx --model b=/m/demo.onnx` (two)" in md
    assert "| new | 100.0 | 97.0 | 0.970 | 150.0 | 165.0 | 300.0 | 330.0 | 1.100 |" in md
    assert "| old | 50.0 | 47.0 | 0.940 |" in md
    assert md.count("| two models (a + b) |") == 4 and "47.5 (300.0), 47.5 (300.0)" in md


def test_the_two_models_split_the_clients_between_their_routes() -> None:
    assert loads("one", "http://h", 16) == [("http://h/v1/detect", 16)]
    assert loads("two", "http://h", 16) == [("http://h/v1/models/a/detect", 8),
                                            ("http://h/v1/models/b/detect", 8)]
    assert loads("two", "http://h", 5) == [("http://h/v1/models/a/detect", 2),
                                           ("http://h/v1/models/b/detect", 3)]


def test_a_service_from_another_checkout_runs_there_with_its_packages_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YOLOSERVE_BENCH_CHECKOUT", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    here = Service("here")
    assert here.cwd == ROOT and here.checkout is None and here.env["PYTHONPATH"] == "/elsewhere"
    there = Service("there", "--model", "m.onnx", checkout=tmp_path)
    assert there.cwd == tmp_path.resolve() and there.checkout == tmp_path.resolve()
    assert there.env["PYTHONPATH"] == f"{tmp_path.resolve()}{os.pathsep}/elsewhere"
    assert there.cmd[1:4] == ["-m", "yoloserve", "serve"]
    monkeypatch.setenv("YOLOSERVE_BENCH_CHECKOUT", str(tmp_path))  # the variable does the same
    assert Service("env").cwd == tmp_path.resolve()


def test_images_per_server_cpu_second_is_reported_without_a_goal() -> None:
    runs = _runs()
    runs[1]["cpu"]["cpu_server_pct"] = 95.0  # two, repeat 1: 95 img/s on 0.95 of a core
    (new, _) = summarise(runs)
    # one: 100 / 1.9 each; two: 100 (95 / 0.95) and 99 / 1.9
    assert abs(new["one_per_cpu"] - 100 / 1.9) < 1e-9
    assert abs(new["two_per_cpu"] - (100 + 99 / 1.9) / 2) < 1e-9
    row = next(g for g in goals([new]) if g["goal"].startswith("(no goal)"))
    assert row["met"] == "-" and row["measured"] == "1.445 ×"
