"""``python -m bench scalesim --quick`` runs end to end (stand-in hosts, the balancer, the load
generator) and writes its JSON, markdown and plot in the shape the report promises; the figures
themselves are this machine's and are not checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import RESULTS
from harness.procs import ROOT

pytestmark = pytest.mark.slow


def test_quick_run_writes_every_figure_for_every_host_count() -> None:
    stem = RESULTS / "raw" / "scalesim_quick"
    for suffix in (".json", ".md", ".png"):
        stem.with_suffix(suffix).unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "bench", "scalesim", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## Goals" in done.stdout

    data = json.loads(stem.with_suffix(".json").read_text())
    assert {"machine", "settings", "lb_code", "ceilings", "rows", "summary", "goals",
            "wall_s"} <= set(data)
    hosts = data["settings"]["hosts"]
    assert hosts == [2, 4]
    assert [(r["target"], r["load"]) for r in data["ceilings"]] == [("direct", "ceiling"),
                                                                   ("lb", "ceiling")]
    runs = {(r["hosts"], r["target"], r["load"]) for r in data["rows"]}
    assert runs == {(n, t, load) for n in hosts for t in ("direct", "lb")
                    for load in ("saturation", "half")}
    for row in data["ceilings"] + data["rows"]:
        assert row["ok"] > 0 and row["errors"] == {}, row
        assert {"rps", "p50_ms", "p99_ms", "outside_p50_ms", "outside_p99_ms", "there_p50_ms",
                "back_p50_ms", "cpu"} <= set(row)
        assert "cpu_loadgen_pct" in row["cpu"]
    for row in data["rows"]:
        if row["target"] == "lb":
            assert "cpu_lb_pct" in row["cpu"] and row["lb_cpu_us_per_req"] >= 0

    assert [s["hosts"] for s in data["summary"]] == hosts
    for line in data["summary"]:
        assert {"capacity_rps", "lb_rps", "lb_vs_capacity", "added_p50_ms", "added_p99_ms",
                "added_there_p50_ms", "added_back_p50_ms", "half_added_p50_ms",
                "lb_cpu_us_per_req", "loadgen_cpu_pct"} <= set(line)
        assert line["capacity_rps"] == pytest.approx(n_slots(line["hosts"], data) * 1000
                                                     / data["settings"]["service_ms"])
    assert len(data["goals"]) == 3
    assert all(g["met"] in ("met", "NOT met") for g in data["goals"])

    md = stem.with_suffix(".md").read_text()
    for heading in ("## How it was measured", "## Per host count", "## Goals", "## Every run"):
        assert heading in md
    assert stem.with_suffix(".png").stat().st_size > 0


def n_slots(hosts: int, data: dict[str, object]) -> int:
    settings = data["settings"]
    assert isinstance(settings, dict)
    return hosts * int(settings["concurrency"])
