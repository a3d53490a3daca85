"""The import contracts (pyproject.toml, ``[tool.importlinter]``) hold on the tree, and each of the
service's layer contracts breaks when an import that crosses it is planted in a copy of the tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["yoloserve", "bench", "harness", "service", "loadbalancer", "clients", "batching", "wire"]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_tree_keeps_every_import_contract() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "0 broken" in run.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages' Python files and the contracts, outside the checkout."""
    root = tmp_path_factory.mktemp("tree")
    for name in PACKAGES:
        shutil.copytree(ROOT / name, root / name,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "results", "*.pt",
                                                      "*.onnx", "*_model"))
    shutil.copy(ROOT / "pyproject.toml", root)
    return root


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("service/runtime/inferencer.py", "import service.api.v1.detect",
     "Service layers: the app > the protocol fronts > the runtime > the engine"),
    ("service/api/v1/model.py", "import service.api.v2.routes",
     "The protocol fronts are independent of each other"),
    ("service/settings.py", "import service.metrics",
     "no two parts (a sub-package or a plain module) import each other"),
    ("loadbalancer/policies.py", "import loadbalancer.server",
     "no two parts (a sub-package or a plain module) import each other"),
], ids=["runtime-imports-a-front", "front-imports-front", "service-cycle", "balancer-cycle"])
def test_a_planted_import_breaks_its_contract(copy: Path, module: str, planted: str,
                                              broken: str) -> None:
    target = copy / module
    original = target.read_text()
    target.write_text(original + f"\n{planted}  # planted\n")
    try:
        run = _lint(copy)
    finally:
        target.write_text(original)
    assert run.returncode != 0
    names = [c["name"] for c in tomllib.loads((ROOT / "pyproject.toml").read_text())
             ["tool"]["importlinter"]["contracts"]]
    name = next(n for n in names if broken in n)
    report = " ".join(run.stdout.split())  # the report wraps long names
    assert f"{name} BROKEN" in report
