"""The proving ground, built once for the module: three namespace hosts running ``yoloserve
serve``, the balancer in a fourth; skipped where namespaces cannot be made (not root, no ``ip``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.multihost.ground import Ground
from harness.multihost.netns import unavailable


@pytest.fixture(scope="module")
def ground() -> Iterator[Ground]:
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"multi-host tests: {reason}")
    with Ground() as built:
        yield built
