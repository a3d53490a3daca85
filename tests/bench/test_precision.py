"""The precision benchmark's arithmetic and report, the engine benchmark's combinations and
ratio column, and the hardware line every saved report carries; no timing is measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import bench.common
from bench.engine_throughput import combos, with_ratios
from bench.precision import Config, acceptance, best_of, configs, core_seconds, ratios, report


def test_core_seconds_add_the_forward_share_and_one_core_of_decoding() -> None:
    # 2 cores at 200 img/s: 10 ms of core time an image; decoding at 400 img/s: 2.5 ms
    w = core_seconds(forward_ips=200.0, decode_ips=400.0, cores=2)
    assert w["forward_core_s"] == pytest.approx(0.01)
    assert w["decode_core_s"] == pytest.approx(0.0025)
    assert w["total_core_s"] == pytest.approx(0.0125)
    assert w["unavoidable_ips"] == pytest.approx(160.0)


def test_best_of_takes_each_rate_higher_of_before_and_after() -> None:
    key = Config("openvino", "bf16").key
    before = [{"key": key, "plan": "2 x 1", "forward_ips": 200.0, "decode_ips": 300.0}]
    after = [{"key": key, "plan": "2 x 1", "forward_ips": 180.0, "decode_ips": 400.0}]
    (w,) = best_of(before, after, cores=2)
    assert (w["forward_ips"], w["decode_ips"]) == (200.0, 400.0)
    assert (w["forward_before_ips"], w["forward_after_ips"]) == (200.0, 180.0)
    assert w["unavoidable_ips"] == pytest.approx(160.0)


def test_configs_put_the_onnx_baseline_first_and_add_a_row_set_when_asked() -> None:
    base = configs(["fp32", "bf16"], "square", False)
    assert [c.key for c in base] == ["onnx fp32 (square)", "openvino fp32 (square)",
                                     "openvino bf16 (square)"]
    extra = configs(["bf16"], "rect", True)
    assert extra[-1] == Config("openvino", "bf16", "rect", True)
    assert extra[-1].key == "openvino bf16 (rect, decode-reduce)"
    args = extra[-1].serve_args(Path("models/demo.pt"), 8)
    assert args[args.index("--precision") + 1] == "bf16" and "--decode-reduce" in args
    assert args[args.index("--letterbox") + 1] == "rect"


def _served(config: Config, ips: float) -> dict[str, Any]:
    return {"key": config.key, **config.__dict__, "options": config.options,
            "served_as": f"{config.backend} {config.precision} {config.letterbox}", "img_s": ips,
            "p50_ms": 100.0, "p99_ms": 200.0, "n": 1000, "errors": 0, "mean_batch": 7.5,
            "cpu_server_pct": 180.0, "cpu_loadgen_pct": 20.0}


def _data() -> dict[str, Any]:
    onnx, fp32, bf16 = Config("onnx", "fp32"), Config("openvino", "fp32"), Config("openvino", "bf16")
    rect = Config("openvino", "bf16", "rect")
    served = [_served(onnx, 80.0), _served(fp32, 90.0), _served(bf16, 120.0), _served(rect, 150.0)]
    work = best_of([{"key": bf16.key, "plan": "2 pass(es) at once, 1 thread(s) each",
                     "forward_ips": 200.0, "decode_ips": 400.0}], [], cores=2)
    settings = {"seconds": 15.0, "warmup": 3.0, "clients": 16, "images": 128, "batch": 8,
                "forward_seconds": 5.0, "cores": 2}
    return {"settings": settings, "served": served, "unavoidable": work,
            "ratios": ratios(served, work), "acceptance": acceptance(served, work),
            "skipped": [{"config": "openvino int8 (square)", "why": "no int8 model"}]}


def test_ratios_against_fp32_of_both_backends_and_the_unavoidable_rate() -> None:
    got = {r["ratio"]: r["value"] for r in _data()["ratios"]}
    assert got["served openvino bf16 (square) / served openvino fp32 (square)"] == pytest.approx(120 / 90)
    assert got["served openvino bf16 (square) / served onnx fp32 (square)"] == pytest.approx(1.5)
    assert got["served openvino fp32 (square) / served onnx fp32 (square)"] == pytest.approx(90 / 80)
    assert got["served openvino bf16 (rect) / served openvino bf16 (square)"] == pytest.approx(1.25)
    assert got["served openvino bf16 (square) / its unavoidable rate"] == pytest.approx(0.75)
    # the rect set has no fp32 row here: no ratio is made up for it
    assert not any("rect) / served openvino fp32" in k for k in got)


def test_acceptance_is_the_square_bf16_row_against_its_unavoidable_rate_and_fp32() -> None:
    a = _data()["acceptance"]
    assert (a["served_ips"], a["unavoidable_ips"]) == (120.0, pytest.approx(160.0))
    assert a["served_over_unavoidable"] == pytest.approx(0.75)
    assert a["over_openvino_fp32"] == pytest.approx(120 / 90)
    assert a["over_onnx_fp32"] == pytest.approx(1.5)
    assert acceptance([], []) is None


def test_report_names_every_table_and_what_was_not_run() -> None:
    text = report(_data())
    assert "served / unavoidable **0.750**" in text
    for heading in ("## Headline", "## How it was measured", "## Served", "## Unavoidable work", "## Ratios"):
        assert heading in text
    assert "| openvino bf16 (square) | 2 pass(es) at once, 1 thread(s) each |" in text
    # core-ms per image: 2 cores / 200 img/s = 10, 1 / 400 img/s = 2.5, together 12.5 (160 img/s)
    assert "| 10.00 | 400.0 | 2.50 | 12.50 | 160.0 |" in text
    assert "0.750" in text and "- openvino int8 (square): no int8 model" in text


def test_save_names_the_cpu_in_json_and_markdown(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    monkeypatch.setenv("YOLOSERVE_CPU_FLAGS", "avx2 avx512_bf16")
    md = bench.common.save("x", {"rows": []}, "| a |", "Title")
    data = json.loads((tmp_path / "x.json").read_text())
    assert data["hardware"].endswith("(avx512_bf16 avx2)")
    lines = md.read_text().splitlines()
    assert lines[0] == "# Title" and lines[2] == f"CPU: {data['hardware']}"


def test_engine_combos_follow_the_hardware_and_ratios_use_onnx_fp32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOSERVE_CPU_FLAGS", "avx2 avx512_bf16 avx512_vnni")
    todo, _ = combos(["torch", "onnx", "openvino"], None, "cpu")
    assert todo == [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"),
                    ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")]
    monkeypatch.setenv("YOLOSERVE_CPU_FLAGS", "avx2")
    assert combos(["onnx", "openvino"], None, "cpu")[0] == [("onnx", "fp32"), ("openvino", "fp32")]
    assert combos(["onnx"], ["bf16"], "cpu")[0] == [("onnx", "bf16")]  # asked: tried, and refused
    rows = with_ratios([{"backend": b, "precision": p, "batch": n, "forward_ips": ips}
                        for b, p, n, ips in [("onnx", "fp32", 1, 50.0), ("onnx", "fp32", 8, 100.0),
                                             ("openvino", "bf16", 1, 60.0),
                                             ("openvino", "bf16", 8, 150.0)]])
    assert [r["forward_vs_onnx_fp32"] for r in rows] == [1.0, 1.0, 1.2, 1.5]
    assert rows[3]["forward_vs_batch1"] == 2.5
