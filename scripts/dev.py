#!/usr/bin/env python3
"""Bootstrap and run: ``python3 scripts/dev.py serve [...]`` or ``python3 scripts/dev.py test [...]``.

Needs only Python 3.11 and pip. Creates ``.venv`` beside the project on the first run, installs the
project with its ``server`` and ``dev`` extras into it, and reinstalls only when ``pyproject.toml``
changes. Extra arguments go to ``yoloserve serve`` or to pytest.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".yoloserve-install"


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def ensure_env() -> Path:
    python = BIN / "python"
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != want:
        _run(python, "-m", "pip", "install", "--upgrade", "pip")
        _run(python, "-m", "pip", "install", "-e", ".[server,dev]")
        STAMP.write_text(want)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test", "env"}:
        print(__doc__)
        return 2
    python = ensure_env()
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if argv[0] == "serve":
        cmd = [str(BIN / "yoloserve"), "serve", *argv[1:]]
    elif argv[0] == "test":
        cmd = [str(python), "-m", "pytest", *argv[1:]]
    else:
        return 0
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    if argv[0] == "test" and code == 5:
        print("no tests were collected: failing", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
