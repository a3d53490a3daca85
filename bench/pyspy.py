"""Where a running Python process spends its time: ``py-spy record`` on its pid for a while, its
collapsed stacks read back into shares of the samples.

``record(pid, seconds, out)`` samples the process while it is busy (py-spy leaves out the samples
in which its thread waits in the kernel, the event loop in ``epoll`` among them) and writes
py-spy's raw format (one ``frame;frame;...;leaf COUNT`` line per distinct stack) to ``out``.
``summarise`` turns that into the share of the time the process was busy, and the leaf
functions' self time and every function's inclusive time, as shares of the busy samples.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Profile", "available", "record", "summarise"]

ENTRY_SHARE = 0.9  # inclusive shares from here up are left out of the inclusive list
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _pyspy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    return _pyspy() is not None


def record(pid: int, seconds: float, out: Path, *, rate: int = 200) -> subprocess.Popen[bytes]:
    """Starts sampling ``pid`` for ``seconds`` into ``out`` (raw); wait on the returned process."""
    exe = _pyspy()
    assert exe is not None, "py-spy is not installed"
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate",
           str(rate), "--nonblocking", "--format", "raw", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Profile:
    samples: int
    busy: float  # share of the time the process was busy (the samples over those expected)
    self_time: list[tuple[str, float]]  # leaf function -> share, highest first
    inclusive: list[tuple[str, float]]  # function anywhere on the stack -> share (< ENTRY_SHARE)

    def as_dict(self) -> dict[str, object]:
        return {"samples": self.samples, "busy": self.busy, "self": self.self_time,
                "inclusive": self.inclusive}


def _name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{Path(match['file']).name}:{match['func']}"


def summarise(raw: Path, expected: int, top: int = 15) -> Profile:
    """``expected``: the samples had the process been busy throughout (rate x seconds)."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_name(f) for f in stack.split(";") if f.strip()]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))] or ["?"]
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    share = 1.0 / total if total else 0.0
    # the frames on (nearly) every stack are the entry point and the event loop: no news
    below = [(name, n * share) for name, n in inclusive.most_common() if n * share < ENTRY_SHARE]
    return Profile(
        samples=total,
        busy=min(total / expected, 1.0) if expected else 0.0,
        self_time=[(name, n * share) for name, n in self_time.most_common(top)],
        inclusive=below[:top],
    )
