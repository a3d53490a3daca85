"""How a process plans its forward passes: single-threaded passes, one per core, for ONNX Runtime
on a CPU; one pass on every core otherwise; explicit settings always win."""

from __future__ import annotations

from pathlib import Path

from service.runtime.compute import plan_compute
from service.settings import Settings


def test_onnx_on_a_cpu_runs_one_single_threaded_pass_per_core(demo_onnx: Path) -> None:
    plan = plan_compute(Settings(model=demo_onnx, device="cpu", cores=4))
    assert (plan.backend, plan.device, plan.concurrent_batches, plan.threads) == ("onnx", "cpu", 4, 1)


def test_a_pt_file_with_an_onnx_sibling_plans_for_onnx_on_a_cpu(demo_pt: Path) -> None:
    plan = plan_compute(Settings(model=demo_pt, device="cpu", cores=2))
    assert (plan.backend, plan.concurrent_batches, plan.threads) == ("onnx", 2, 1)


def test_one_pass_at_a_time_takes_every_core(demo_onnx: Path) -> None:
    plan = plan_compute(Settings(model=demo_onnx, device="cpu", cores=4, max_concurrent_batches=1))
    assert (plan.concurrent_batches, plan.threads) == (1, 4)


def test_torch_runs_one_pass_at_a_time(demo_pt: Path) -> None:
    plan = plan_compute(Settings(model=demo_pt, backend="torch", device="cpu", cores=4))
    assert (plan.backend, plan.concurrent_batches) == ("torch", 1)


def test_explicit_threads_win(demo_onnx: Path) -> None:
    plan = plan_compute(Settings(model=demo_onnx, device="cpu", cores=8, threads=2,
                                 max_concurrent_batches=3))
    assert (plan.concurrent_batches, plan.threads) == (3, 2)
