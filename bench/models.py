"""One device: two models against one. Images/s and p50/p99 of one ``yoloserve serve`` process
serving two models (16 closed-loop clients, 8 on each model's route) against one serving a single
model (16 clients), in the same run.

    python -m bench models [--quick] [--seconds 20] [--repeats 2] [--clients 16]
                           [--checkout PATH ...] [--model models/demo.onnx]

The service runs every model of a process on one shared device (``batching.Device``: the
forward-pass slots of the compute plan, which every model's batcher takes from), so two models
should cost about what one does. The goal (issue 24): the two-model service's images/s
≥ 0.95 × the one-model service's, and its p99 ≤ 1.1 × as high.

1. **one**: ``yoloserve serve --model MODEL``, 16 clients on ``/v1/detect``.
2. **two**: ``yoloserve serve --model a=MODEL --model b=MODEL``, 8 clients on
   ``/v1/models/a/detect`` and 8 on ``/v1/models/b/detect`` at the same time, in one window.

Both with the result cache off and the same distinct images; each service started alone, warmed
up for ``--warmup`` seconds (answers discarded), then measured for ``--seconds``. The pair is run
``--repeats`` times, alternating one, two, one, two, so that a machine that changes speed meanwhile
touches both. With ``--checkout PATH`` (another checkout of the project, e.g. a worktree of the
previous commit) the same pair is also run from there, interleaved with this checkout's, and the
report shows both side by side, labelled by ``git rev-parse --short HEAD``.

Each figure of a configuration is the mean of its repeats; the ratios are two / one of those
means, and each repeat's own ratio is shown too. On a machine shared with other work the server
gets less CPU in some runs than in others, which moves images/s and p99 far more than the
difference measured; the report therefore also shows, with no goal, images per second of the
server's own CPU time (psutil), which depends far less on it, and each run's server CPU.

Writes ``bench/results/models.{json,md,png}`` (``--quick``: ``bench/results/raw/models_quick.*``);
``--replot`` redoes the summary, markdown and plot from the saved JSON's runs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import plots
from bench.common import RESULTS, machine, markdown_table, save
from bench.loadgen import run_closed_together
from bench.procs import service
from bench.scrape import batch_stats, scrape
from harness.images import Body, make_bodies, make_images
from harness.procs import ROOT, Fleet

__all__ = ["GOAL_IPS", "GOAL_P99", "goals", "main", "summarise", "tables"]

GOAL_IPS = 0.95  # two models' images/s ≥ this × one model's
GOAL_P99 = 1.1  # two models' p99 ≤ this × one model's
CONFIGS = ("one", "two")
LABELS = {"one": "one model", "two": "two models (a + b)"}
TITLE = "One device: two models against one"


@dataclass(frozen=True)
class Plan:
    seconds: float
    warmup: float  # discarded load before each measured window
    repeats: int
    clients: int  # in all; split evenly between the two models


@dataclass(frozen=True)
class Checkout:
    label: str  # the commit, and whether its working tree has changes
    path: str  # "" for this checkout
    commit: str
    dirty: bool

    @property
    def where(self) -> Path | None:
        return Path(self.path) if self.path else None


def checkout_of(path: Path | None) -> Checkout:
    """Which commit ``path`` (None: this repository) has checked out, and whether it has changes."""
    folder = (path or ROOT).resolve()

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                                  text=True, check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or folder.name
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    label = commit + (" + working tree" if dirty else "") + ("" if path else " (this checkout)")
    return Checkout(label, str(folder) if path else "", commit, dirty)


def server_args(config: str, model: Path) -> list[str]:
    if config == "one":
        return ["--model", str(model)]
    return ["--model", f"a={model}", "--model", f"b={model}"]


def loads(config: str, url: str, clients: int) -> list[tuple[str, int]]:
    if config == "one":
        return [(url + "/v1/detect", clients)]
    half = clients // 2
    return [(url + "/v1/models/a/detect", half), (url + "/v1/models/b/detect", clients - half)]


def run_pair_member(config: str, checkout: Checkout, repeat: int, model: Path,
                    bodies: list[Body], plan: Plan) -> dict[str, Any]:
    """Start ``config``'s service from ``checkout``, warm it up, measure it, stop it."""
    import httpx

    name = f"models_{checkout.commit if checkout.path else 'this'}_{config}"
    proc = service(name, *server_args(config, model), checkout=checkout.where)
    with Fleet(proc):
        models = httpx.get(proc.url + "/v1/models", timeout=10.0)
        load = loads(config, proc.url, plan.clients)
        run_closed_together(load, bodies, plan.warmup, warmup=0.0)  # discarded
        before = scrape(proc.url)
        results = run_closed_together(load, bodies, plan.seconds, warmup=0.5,
                                      pids={"server": proc.pid})
        batch = batch_stats(before, scrape(proc.url), 8)
    whole, per_model = results[0], results[1:]
    row = {"checkout": checkout.label, "config": config, "repeat": repeat, **whole.to_dict(),
           "batch": batch, "models": models.json() if models.status_code == 200 else None,
           "per_model": [{"url": r.target, "clients": r.concurrency, "throughput": r.throughput,
                          "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "ok": r.ok, "errors": r.errors}
                         for r in per_model]}
    print(f"[{checkout.label}] {LABELS[config]}, repeat {repeat + 1}: {whole.summary()}"
          + "".join(f"\n    {r.summary()}" for r in per_model), flush=True)
    return row


# summary, goals and tables -------------------------------------------------------------------
def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _shown(x: float, up: bool) -> str:
    """A ratio to 3 decimals, never rounded towards its goal: down for a ≥ goal, up for a ≤."""
    if math.isnan(x):
        return "nan"
    scaled = round(x * 1000, 6)  # 330 / 300 is 1.1, not 1.1000000000000001
    v = (math.ceil(scaled) if up else math.floor(scaled)) / 1000
    return f"{v:.3f}"


def _per_cpu(run: dict[str, Any]) -> float:
    """Images per second of the server's CPU time: what other processes on a shared machine take
    from the server lowers its images/s far more than this (NaN without a CPU figure)."""
    pct = run.get("cpu", {}).get("cpu_server_pct")
    return 100 * run["throughput"] / pct if pct else float("nan")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per checkout (in the order first seen): each configuration's mean images/s, p50 and p99
    over its repeats, the ratios two / one of those means, and each repeat's own ratios."""
    out = []
    for label in dict.fromkeys(r["checkout"] for r in runs):
        mine = {c: sorted((r for r in runs if r["checkout"] == label and r["config"] == c),
                          key=lambda r: r["repeat"]) for c in CONFIGS}
        row: dict[str, Any] = {"checkout": label}
        for c in CONFIGS:
            for key in ("throughput", "p50_ms", "p99_ms"):
                row[f"{c}_{key}"] = _mean([r[key] for r in mine[c]])
            row[f"{c}_repeats"] = len(mine[c])
            row[f"{c}_per_cpu"] = _mean([_per_cpu(r) for r in mine[c]])
        row["ratio_ips"] = row["two_throughput"] / row["one_throughput"] if mine["one"] else float("nan")
        row["ratio_p99"] = row["two_p99_ms"] / row["one_p99_ms"] if mine["one"] else float("nan")
        row["ratio_per_cpu"] = (row["two_per_cpu"] / row["one_per_cpu"] if mine["one"]
                                else float("nan"))
        one_by = {r["repeat"]: r for r in mine["one"]}
        row["per_repeat"] = [{"repeat": t["repeat"],
                              "ratio_ips": t["throughput"] / one_by[t["repeat"]]["throughput"],
                              "ratio_p99": t["p99_ms"] / one_by[t["repeat"]]["p99_ms"]}
                             for t in mine["two"] if t["repeat"] in one_by
                             and one_by[t["repeat"]]["throughput"] > 0]
        out.append(row)
    return out


def goals(summary: list[dict[str, Any]]) -> list[dict[str, str]]:
    out = []
    for s in summary:
        repeats = ", ".join(f"{_shown(p['ratio_ips'], False)} / {_shown(p['ratio_p99'], True)}"
                            for p in s["per_repeat"])
        each = f"; each repeat (images/s / p99): {repeats}" if repeats else ""
        out.append({"checkout": s["checkout"],
                    "goal": f"two models ≥ {GOAL_IPS} × one model's images/s",
                    "measured": f"{_shown(s['ratio_ips'], False)} ×",
                    "figures": f"{s['two_throughput']:.1f} vs {s['one_throughput']:.1f} img/s "
                               f"(means of {s['two_repeats']} and {s['one_repeats']} runs){each}",
                    "met": "met" if s["ratio_ips"] >= GOAL_IPS else "NOT met"})
        out.append({"checkout": s["checkout"],
                    "goal": f"two models' p99 ≤ {GOAL_P99} × one model's",
                    "measured": f"{_shown(s['ratio_p99'], True)} ×",
                    "figures": f"{s['two_p99_ms']:.1f} vs {s['one_p99_ms']:.1f} ms",
                    "met": "met" if s["ratio_p99"] <= GOAL_P99 else "NOT met"})
        out.append({"checkout": s["checkout"],
                    "goal": "(no goal) images per second of the server's CPU time, two / one: "
                            "depends far less on the share of the cores other processes leave it",
                    "measured": f"{_shown(s['ratio_per_cpu'], False)} ×",
                    "figures": f"{s['two_per_cpu']:.1f} vs {s['one_per_cpu']:.1f} images per "
                               "CPU-second",
                    "met": "-"})
    return out


def _num(v: Any, nd: int = 1) -> str:
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def tables(data: dict[str, Any]) -> str:
    plan = data["plan"]
    runs = [{"checkout": r["checkout"], "config": LABELS[r["config"]],
             "repeat": r["repeat"] + 1, "clients": r["concurrency"],
             "img/s": _num(r["throughput"]), "p50 ms": _num(r["p50_ms"]),
             "p95 ms": _num(r["p95_ms"]), "p99 ms": _num(r["p99_ms"]), "n": r["ok"],
             "errors": sum(r["errors"].values()) if r["errors"] else 0,
             "per model img/s (p99 ms)": ", ".join(
                 f"{_num(m['throughput'])} ({_num(m['p99_ms'])})" for m in r["per_model"]) or "-",
             "mean batch": _num(r["batch"].get("mean_batch", "-"), 2),
             "batch exec ms": _num(r["batch"].get("mean_exec_ms", "-")),
             "server cpu %": _num(r["cpu"].get("cpu_server_pct"), 0),
             "loadgen cpu %": _num(r["cpu"].get("cpu_loadgen_pct"), 0)}
            for r in data["runs"]]
    side = [{"checkout": s["checkout"], "one img/s": _num(s["one_throughput"]),
             "two img/s": _num(s["two_throughput"]),
             "images/s two/one": _shown(s["ratio_ips"], False),
             "one p50 ms": _num(s["one_p50_ms"]), "two p50 ms": _num(s["two_p50_ms"]),
             "one p99 ms": _num(s["one_p99_ms"]), "two p99 ms": _num(s["two_p99_ms"]),
             "p99 two/one": _shown(s["ratio_p99"], True),
             "img/CPU-s two/one": _shown(s.get("ratio_per_cpu", float("nan")), False)}
            for s in data["summary"]]
    args = data["server_args"]
    return "\n\n".join([
        f"Servers: `yoloserve serve {' '.join(args['one'])}` (one) and "
        f"`yoloserve serve {' '.join(args['two'])}` (two), result cache off; {plan['clients']} "
        f"closed-loop clients (two: {plan['clients'] // 2} on each model's route), "
        f"{plan['warmup']:g} s warm-up, {plan['seconds']:g} s measured, {plan['repeats']} "
        f"repeat(s) alternating one, two; {data['images']} distinct images.",
        "## Two models against one (means of the repeats)",
        markdown_table(side, ["checkout", "one img/s", "two img/s", "images/s two/one",
                              "one p50 ms", "two p50 ms", "one p99 ms", "two p99 ms",
                              "p99 two/one", "img/CPU-s two/one"]),
        "## Goals",
        markdown_table(data["goals"], ["checkout", "goal", "measured", "figures", "met"]),
        "## Every run, in the order run",
        markdown_table(runs, ["checkout", "config", "repeat", "clients", "img/s", "p50 ms",
                              "p95 ms", "p99 ms", "n", "errors", "per model img/s (p99 ms)",
                              "mean batch", "batch exec ms", "server cpu %", "loadgen cpu %"]),
    ])


def draw(data: dict[str, Any], path: Path) -> Path:
    """Images/s and p99 of one model and of two, per checkout, with each repeat as a dot."""
    import matplotlib.pyplot as plt

    summary, runs = data["summary"], data["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.38
    for ax, key, ylabel in ((axes[0], "throughput", "images/s (HTTP 200)"),
                            (axes[1], "p99_ms", "p99 latency (ms)")):
        for i, config in enumerate(CONFIGS):
            xs = [j + (i - 0.5) * width for j in range(len(summary))]
            bars = ax.bar(xs, [s[f"{config}_{key}"] for s in summary], width,
                          label=f"{LABELS[config]}, {data['plan']['clients']} clients",
                          color=f"C{i}")
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
            for x, s in zip(xs, summary, strict=True):
                ys = [r[key] for r in runs if r["checkout"] == s["checkout"]
                      and r["config"] == config]
                ax.plot([x] * len(ys), ys, "k.", markersize=4)
        ratio, up = ("ratio_ips", False) if key == "throughput" else ("ratio_p99", True)
        ax.set_xticks(range(len(summary)),
                      [f"{s['checkout']}\ntwo/one {_shown(s[ratio], up)}" for s in summary],
                      fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_title(f"images/s (goal: two/one ≥ {GOAL_IPS})")
    axes[1].set_title(f"p99 (goal: two/one ≤ {GOAL_P99})")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("One device: two models against one (bars: means; dots: each run)")
    return plots.save_figure(fig, path)


# the program ---------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench models",
                                 description="one service with two models against one with one")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "demo.onnx",
                    help="the model both configurations serve (its absolute path goes to every "
                         "checkout's server) [models/demo.onnx]")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients in all [16]")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window of each run [20]")
    ap.add_argument("--warmup", type=float, default=5.0, help="discarded load first [5]")
    ap.add_argument("--repeats", type=int, default=2, help="one, two, one, two, ... [2]")
    ap.add_argument("--images", type=int, default=128, help="distinct JPEGs [128]")
    ap.add_argument("--checkout", "--baseline-checkout", dest="checkouts", type=Path,
                    action="append", default=[],
                    help="also run the pair from this other checkout (repeatable)")
    ap.add_argument("--name", default=None, help="results name [models]")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds per run")
    ap.add_argument("--replot", action="store_true",
                    help="only redo the summary, markdown and plot from the saved JSON's runs")
    return ap.parse_args(argv)


def plan_for(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(seconds=3.0, warmup=1.0, repeats=1, clients=args.clients)
    return Plan(args.seconds, args.warmup, args.repeats, args.clients)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    name = args.name or "models"
    if args.quick:
        name = f"raw/{name}_quick"
    if args.replot:  # the summary, goals, markdown and plot again from the saved runs
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        saved["summary"] = summarise(saved["runs"])
        saved["goals"] = goals(saved["summary"])
        md = save(name, saved, tables(saved), TITLE)
        print(f"wrote {md.relative_to(ROOT)}, {draw(saved, md.with_suffix('.png')).relative_to(ROOT)}")
        return 0
    plan = plan_for(args)
    model = args.model.resolve()
    checkouts = [checkout_of(None), *(checkout_of(p) for p in args.checkouts)]
    print(f"models: {machine()}; {plan}; checkouts {[c.label for c in checkouts]}", flush=True)
    started = time.monotonic()
    images = make_images(16 if args.quick else args.images)
    bodies = make_bodies(images)
    runs = [run_pair_member(config, checkout, repeat, model, bodies, plan)
            for repeat in range(plan.repeats) for checkout in checkouts for config in CONFIGS]
    summary = summarise(runs)
    data: dict[str, Any] = {
        "model": str(model), "device": "cpu", "plan": asdict(plan), "images": len(images),
        "checkouts": [asdict(c) for c in checkouts],
        "server_args": {c: server_args(c, model) for c in CONFIGS},
        "goal": {"ratio_ips_min": GOAL_IPS, "ratio_p99_max": GOAL_P99},
        "runs": runs, "summary": summary, "goals": goals(summary),
        "wall_s": time.monotonic() - started,
    }
    table = tables(data)
    print(table)
    md = save(name, data, table, TITLE)
    png = draw(data, md.with_suffix(".png"))
    print(f"wrote {png.relative_to(ROOT)}")
    print(f"wrote {md.relative_to(ROOT)} in {data['wall_s']:.0f} s")
    bad = [(r["checkout"], r["config"], r["errors"]) for r in runs if r["errors"]]
    if bad:
        print(f"NOT every answer was 200: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
