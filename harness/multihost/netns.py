"""Hosts that behave like separate machines: Linux network namespaces joined by veth pairs to a
bridge, with addresses in 198.18.0.0/15 (RFC 2544's range for network benchmarks).

    root namespace (the client)                 198.18.0.1/24 on the bridge ysmh-br
      ├─ veth ysmh-lb  ── eth0 of namespace ysmh-lb   198.18.0.2   (the balancer)
      ├─ veth ysmh-h1  ── eth0 of namespace ysmh-h1   198.18.0.11  (a service)
      └─ ...

A host's link is cut by setting its bridge-side veth down (``Network.cut``): its packets are then
dropped silently, as when a cable is pulled, and nothing answers with a reset. A lossy link
(``Network.lose``) drops a share of the host's packets each way at random with an nftables rule
in its namespace (``numgen random``), since this project's kernels have no ``netem``. Everything made
here is named ``ysmh-*``; ``Network`` removes it all on every exit path, and removes what a run
that was killed left behind before it starts (``remove_leftovers``). One run at a time holds the
lock file (``LOCK``), so that two runs cannot tear down each other's hosts.

Needs root and iproute2 (``ip``), and nftables (``nft``) for loss; ``unavailable()`` and
``loss_unavailable()`` say why the tests must skip otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from harness.procs import wait_until

__all__ = [
    "BRIDGE",
    "GATEWAY",
    "LOCK",
    "PREFIX",
    "Host",
    "Network",
    "loss_unavailable",
    "remove_leftovers",
    "unavailable",
]

PREFIX = "ysmh-"
BRIDGE = f"{PREFIX}br"
LOSS_TABLE = "ysmh_loss"  # the nftables table of a lossy host's rules, in its namespace
GATEWAY = "198.18.0.1"  # the root namespace's address on the bridge: where the client sends from
NETMASK = 24
LOCK = Path(tempfile.gettempdir()) / "ysmh.lock"
IP_TIMEOUT = 10.0  # seconds one ``ip`` command may take


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its output (raises ``RuntimeError`` with its stderr on failure if
    ``check``)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def nft(ns: str, *args: str, script: str | None = None, check: bool = True) -> None:
    """Run ``nft ARGS`` inside namespace ``ns`` (``script`` on its standard input)."""
    done = subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script,
                          capture_output=True, text=True, timeout=IP_TIMEOUT)
    if check and done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)} in {ns} failed ({done.returncode}): "
                           f"{done.stderr.strip()}")


def loss_unavailable() -> str | None:
    """Why packet loss cannot be made here (no ``nft``), or None when it can."""
    if shutil.which("nft") is None:
        return "nftables' `nft` is not installed"
    return unavailable()


def unavailable() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: ``name`` (``h1``, ``lb``), its address on the bridge, its namespace and the
    bridge-side end of its veth pair (both ``ysmh-NAME``)."""

    name: str
    address: str

    @property
    def ns(self) -> str:
        return f"{PREFIX}{self.name}"

    @property
    def link(self) -> str:
        """The bridge-side veth (in the root namespace): down cuts the host off."""
        return f"{PREFIX}{self.name}"

    @property
    def exec_prefix(self) -> list[str]:
        """What runs a command inside the namespace (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns]


def _ours(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(PREFIX)]


def _namespaces() -> list[str]:
    return _ours([line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()])


def _links() -> list[str]:
    names = [line.split(":")[1].strip().split("@")[0]
             for line in ip("-o", "link", "show").splitlines() if ":" in line]
    return _ours(names)


def _kill_inside(ns: str) -> None:
    """SIGKILL every process still running in namespace ``ns`` (ours: started by this harness)."""
    for pid in ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def remove_leftovers(timeout: float = 20.0) -> None:
    """Remove every ``ysmh-*`` namespace (after killing what runs in it) and link."""
    for ns in _namespaces():
        _kill_inside(ns)
    for link in _links():  # deleting one end of a veth pair deletes both
        ip("link", "del", link, check=False)
    for ns in _namespaces():
        ip("netns", "del", ns, check=False)
    # the kernel tears a namespace's devices down asynchronously
    wait_until(lambda: not _links() and not _namespaces(), timeout,
               f"the {PREFIX}* namespaces and links to be gone", every=0.1)


class Network:
    """A bridge with one namespace per host, made on enter and removed on exit (whatever
    happened); the lock file is held in between."""

    def __init__(self, hosts: list[Host], lock_timeout: float = 60.0) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.lock_timeout = lock_timeout
        self._lock: IO[bytes] | None = None
        self._losing: set[str] = set()  # hosts with a loss rule (gone with their namespace)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> Self:
        self._acquire()
        try:
            remove_leftovers()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            remove_leftovers()
        finally:
            self._release()

    # -- faults ----------------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Cut host ``name`` off the bridge: its packets are dropped without a word."""
        ip("link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        ip("link", "set", self.hosts[name].link, "up")

    def lose(self, name: str, percent: float) -> None:
        """Drop ``percent`` % of host ``name``'s packets on its link, each way, at random."""
        per_mille = round(percent * 10)
        drop = f"numgen random mod 1000 < {per_mille} drop"
        script = (f"table inet {LOSS_TABLE} {{\n"
                  f"  chain inbound {{ type filter hook input priority 0; iifname eth0 {drop}; }}\n"
                  f"  chain outbound {{ type filter hook output priority 0; oifname eth0 {drop}; }}\n"
                  "}\n")
        nft(self.hosts[name].ns, "-f", "-", script=script)
        self._losing.add(name)

    def unlose(self, name: str) -> None:
        """Stop dropping host ``name``'s packets."""
        nft(self.hosts[name].ns, "delete", "table", "inet", LOSS_TABLE)
        self._losing.discard(name)

    def is_losing(self, name: str) -> bool:
        return name in self._losing

    def is_up(self, name: str) -> bool:
        return "state DOWN" not in ip("-o", "link", "show", self.hosts[name].link)

    # -- inside ------------------------------------------------------------------------------------

    def _build(self) -> None:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", f"{GATEWAY}/{NETMASK}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")
        for host in self.hosts.values():
            peer = f"{host.link}p"  # renamed eth0 once inside its namespace
            ip("netns", "add", host.ns)
            ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
            ip("link", "set", peer, "netns", host.ns)
            ip("-n", host.ns, "link", "set", peer, "name", "eth0")
            ip("-n", host.ns, "addr", "add", f"{host.address}/{NETMASK}", "dev", "eth0")
            ip("-n", host.ns, "link", "set", "eth0", "up")
            ip("-n", host.ns, "link", "set", "lo", "up")
            ip("link", "set", host.link, "master", BRIDGE)
            ip("link", "set", host.link, "up")

    def _acquire(self) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = LOCK.open("wb")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._release()
                    raise TimeoutError(f"another multi-host run holds {LOCK}") from None
                time.sleep(0.2)  # polling another process's lock, with a deadline

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None
