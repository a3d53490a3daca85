"""``python -m bench streams --quick`` runs end to end (the service, the tracked streams, the
model.track processes of the baseline) and writes its JSON, markdown and plot in the shape the
report promises; the figures themselves are this machine's and are not checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.common import RESULTS
from bench.streams import BASELINE
from harness.procs import ROOT

pytestmark = pytest.mark.slow


def test_quick_run_writes_every_figure_for_both_systems() -> None:
    stem = RESULTS / "raw" / "streams_quick"
    for suffix in (".json", ".md", ".png"):
        stem.with_suffix(suffix).unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "bench", "streams", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## Goal" in done.stdout

    data = json.loads(stem.with_suffix(".json").read_text())
    assert {"machine", "settings", "rows", "summary", "wall_s"} <= set(data)
    counts = data["settings"]["streams"]
    assert counts == [1, 2]
    systems = {r["system"] for r in data["rows"]}
    ours = {"yoloserve (HTTP)", "yoloserve (WebSocket)"}  # both transports by default
    assert systems == {*ours, BASELINE}
    assert {(r["system"], r["streams"]) for r in data["rows"]} == {
        (s, n) for s in systems for n in counts}
    for row in data["rows"]:
        assert row["errors"] == 0 and row["frames"] > 0, row
        assert {"offered_fps", "total_fps", "min_stream_fps", "p50_ms", "p99_ms",
                "held"} <= set(row)
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    summary = data["summary"]
    assert sorted((r["system"], r["streams"]) for r in summary["ratios"]) == sorted(
        (s, n) for s in ours for n in counts)
    assert set(summary["most_streams_held"]) == {*ours, "baseline"}
    assert summary["goal"]["system"] in ours
    assert summary["goal"]["met"] in ("met", "NOT met")
    # the forward pass alone, before and after, of the backends that load (torch and ONNX here)
    assert {r["when"] for r in data["ceiling"]} == {"before", "after"}
    assert all(r["forward_ips"] > 0 for r in data["ceiling"])
    assert summary["goal"]["forward_ceiling_ips"] == max(r["forward_ips"] for r in data["ceiling"])
    assert summary["goal"]["needed_fps"] > 0

    md = stem.with_suffix(".md").read_text()
    for heading in ("## How it was measured", "## Results", "## Ratios", "## Goal",
                    "## Forward pass alone"):
        assert heading in md
    assert stem.with_suffix(".png").stat().st_size > 0
