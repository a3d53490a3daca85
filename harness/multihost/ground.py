"""The multi-host proving ground: three namespace hosts, each running a real ``yoloserve serve``,
the real balancer (``yoloserve lb``) in a namespace of its own, and a steady closed-loop load of
real detections sent from outside (the root namespace) by the project's client at its defaults.

    ground = Ground()             # network, services on h1..h3, balancer on lb
    with ground:
        outcome = asyncio.run(link_cut(ground))

Each fault is a function of the ground that runs the load, injects the fault, waits for the
recovery the acceptance asks for (polling with deadlines) and returns an ``Outcome``: every call
and its error, latency percentiles, the requests the balancer sent each host, and when things
happened. The tests assert on outcomes; ``bench/multihost.py`` prints and saves them.

The hosts are ``netns.py``'s, the processes in them ``procs.py``'s, the load and its figures
``load.py``'s. Faults:
- rolling restart: each host in turn drained through the admin API, SIGTERMed, started again,
  taken back;
- link cut: a host's veth set down for 10 s, then up;
- frozen host: its service SIGSTOPped for 10 s, then SIGCONTed;
- SIGKILL of a host's service, then a start again;
- a lossy link: 5 % of a host's packets dropped each way for 10 s (an nftables rule in its
  namespace; ``netns.py``);
- +100 ms on one host: ``tc netem`` does not exist on this project's kernels, so the delay is
  emulated by a user-space TCP proxy in the host's namespace (``harness/multihost/delayproxy.py``,
  50 ms each way) that the balancer reaches that host through.

Timed waits are faults' durations or measurement windows (the load runs meanwhile); every wait for
a state is a poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self

from harness.multihost.load import CALLERS, Load, Monitor, Outcome, Window, host_of, outcome, requests
from harness.multihost.netns import Network
from harness.multihost.procs import HOSTS, SERVICE_HOSTS, START_TIMEOUT, DelayProxy, NsBalancer, NsService
from harness.procs import Proc, await_until, start_all, stop_all

__all__ = [
    "CALLERS",
    "HOSTS",
    "SERVICE_HOSTS",
    "Ground",
    "NsBalancer",
    "Outcome",
    "delayed",
    "freeze",
    "healthy",
    "kill",
    "link_cut",
    "lossy",
    "rolling_restart",
]

RECOVERY_TIMEOUT = 60.0  # for the balancer to take a host back once it is reachable again
IMAGE_SIZE = (320, 240)


def _say(text: str) -> None:
    print(f"[multihost {time.strftime('%H:%M:%S')}] {text}", flush=True)


# -- the ground ----------------------------------------------------------------------------------


class Ground:
    """The network, a service on each of h1..h3 and the balancer (``least_request``, its
    defaults otherwise) on lb; everything stopped and removed on exit, whatever happened."""

    def __init__(self, images: int = 16, callers: int = CALLERS) -> None:
        from harness.images import make_images  # OpenCV: only where the ground is built

        self.images = make_images(images, *IMAGE_SIZE)
        self.callers = callers
        self.network = Network(list(HOSTS))
        self.services = {name: NsService(self.network[name]) for name in SERVICE_HOSTS}
        self.lb = NsBalancer("lb", [s.url for s in self.services.values()], "--log-level", "info")
        self.extra: list[Proc] = []  # proxies and balancers a scenario started

    def __enter__(self) -> Self:
        started = time.monotonic()
        self.network.__enter__()
        try:
            start_all(self.services.values())
            start_all([self.lb])
        except BaseException:
            self.close()
            raise
        _say(f"ground up in {time.monotonic() - started:.0f}s: services "
             f"{[s.url for s in self.services.values()]}, balancer {self.lb.url}")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        try:
            for service in self.services.values():
                if service.running():
                    service.signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            stop_all([*self.services.values(), self.lb, *self.extra])
        finally:
            self.network.close()

    def load(self, url: str | None = None) -> Load:
        return Load(url or self.lb.url, self.images, self.callers)

    async def ensure_healthy(self, balancer: NsBalancer | None = None) -> None:
        """Undo whatever a scenario left: every link up, every service running and not frozen,
        none drained, and the balancer routing to all three."""
        balancer = balancer or self.lb
        for name, service in self.services.items():
            if not self.network.is_up(name):
                self.network.restore(name)
            if self.network.is_losing(name):
                self.network.unlose(name)
            if service.running():
                service.signal(signal.SIGCONT)
            else:
                service.start()
        for service in self.services.values():
            await service.wait_ready_async(START_TIMEOUT)
        for bid, backend in (await balancer.backends()).items():
            if backend["draining"]:
                await balancer.patch(bid, {"drain": False})

        async def routing_all() -> bool:
            backends = await balancer.backends()
            return all(b["health"] == "healthy" and not b["ejected"] for b in backends.values())

        await await_until(routing_all, RECOVERY_TIMEOUT, f"{balancer.name} to route to every host",
                          every=0.2)

    async def taken_back(self, monitor: Monitor, service: NsService, since: float,
                         events: dict[str, float], t0: float) -> None:
        """Wait until the balancer says ``service`` is healthy and routable again and then sends
        it requests; note both times in ``events``."""
        balancer = monitor.balancer

        async def routable() -> bool:
            b = (await balancer.backends())[service.id]
            return bool(b["health"] == "healthy" and b["state"] in ("active", "slow_start"))

        back = await await_until(routable, RECOVERY_TIMEOUT, f"{balancer.name} to take {service.name} back")
        events[f"{service.name} healthy again"] = back - t0
        count = (await balancer.backends())[service.id]["totals"]["requests"]

        async def receiving() -> bool:
            return bool((await balancer.backends())[service.id]["totals"]["requests"] > count)

        got = await await_until(receiving, RECOVERY_TIMEOUT, f"{service.name} to get requests again")
        events[f"{service.name} receives again"] = got - t0
        gone = monitor.first(service.id, since, lambda b: b["health"] != "healthy")
        if gone is not None:
            at, backend = gone
            events[f"{service.name} seen {backend['health']}"] = at - t0


# -- scenarios -----------------------------------------------------------------------------------

Fault = Callable[[Monitor, dict[str, float], float], Awaitable[dict[str, Any]]]


async def run_fault(ground: Ground, scenario: str, fault: Fault, *, settle: float = 3.0,
                    after: float = 3.0, balancer: NsBalancer | None = None) -> Outcome:
    """Load through ``balancer`` (the ground's): ``settle`` s of steady load, the fault (which
    returns notes), ``after`` s more, then the outcome of every call made."""
    balancer = balancer or ground.lb
    policy = "least_request"
    before = requests(await balancer.backends())
    events: dict[str, float] = {}
    async with Monitor(balancer) as monitor, ground.load(balancer.url) as load:
        t0 = time.monotonic()
        await asyncio.sleep(settle)  # steady load before the fault: a measurement window
        notes = await fault(monitor, events, t0)
        await asyncio.sleep(after)  # steady load after the recovery: a measurement window
        until = time.monotonic()
    window = Window.of(load.calls, t0, until, before, requests(await balancer.backends()))
    result = outcome(scenario, policy, [window])
    result.events, result.notes = events, notes
    _say(result.summary())
    return result


async def healthy(ground: Ground, seconds: float = 15.0) -> Outcome:
    """Steady load with every host healthy: the reference figures."""

    async def nothing(monitor: Monitor, events: dict[str, float], t0: float) -> dict[str, Any]:
        await asyncio.sleep(seconds)  # the measurement window
        return {}

    await ground.ensure_healthy()
    return await run_fault(ground, "healthy", nothing, settle=0.0, after=0.0)


async def rolling_restart(ground: Ground) -> Outcome:
    """Each host in turn: drained through the admin API, SIGTERMed once idle, started again,
    taken back (healthy, undrained, receiving requests) before the next."""

    async def restart_all(monitor: Monitor, events: dict[str, float], t0: float) -> dict[str, Any]:
        notes: dict[str, Any] = {}
        lb = monitor.balancer
        for name, service in ground.services.items():
            await lb.patch(service.id, {"drain": True})
            events[f"{name} drained"] = time.monotonic() - t0

            async def idle(service: NsService = service) -> bool:
                return bool((await lb.backends())[service.id]["inflight"] == 0)

            events[f"{name} idle"] = await await_until(idle, 30.0, f"{name} to finish its requests") - t0
            notes[f"{name} exit"] = await asyncio.to_thread(service.stop)
            events[f"{name} stopped"] = time.monotonic() - t0
            service.start()
            events[f"{name} ready"] = await service.wait_ready_async(START_TIMEOUT) - t0

            async def probed(service: NsService = service) -> bool:
                return bool((await lb.backends())[service.id]["health"] == "healthy")

            await await_until(probed, RECOVERY_TIMEOUT, f"the balancer's probes of {name} to pass")
            await lb.patch(service.id, {"drain": False})
            await ground.taken_back(monitor, service, time.monotonic(), events, t0)
        return notes

    await ground.ensure_healthy()
    return await run_fault(ground, "rolling restart", restart_all)


async def _wait_inflight(lb: NsBalancer, service: NsService, within: float = 10.0) -> int:
    """Poll until the balancer has requests in flight on ``service``; returns how many."""
    seen = 0

    async def busy() -> bool:
        nonlocal seen
        seen = int((await lb.backends())[service.id]["inflight"])
        return seen > 0

    await await_until(busy, within, f"requests in flight on {service.name}", every=0.01)
    return seen


async def _timed_fault(ground: Ground, host: str, name: str, seconds: float,
                       start: tuple[str, Callable[[], None]], end: tuple[str, Callable[[], None]],
                       during: str) -> Outcome:
    """A fault on ``host`` with requests in flight: ``start`` now, ``end`` ``seconds`` later
    (whatever happens); the balancer must take the host back (healthy, and receiving requests)."""
    service = ground.services[host]
    (start_event, begin), (end_event, finish) = start, end

    async def fault(monitor: Monitor, events: dict[str, float], t0: float) -> dict[str, Any]:
        inflight = await _wait_inflight(monitor.balancer, service)
        begin()
        began = time.monotonic()
        events[start_event] = began - t0
        try:
            await asyncio.sleep(seconds)  # the fault's duration
        finally:
            finish()
        events[end_event] = time.monotonic() - t0
        await ground.taken_back(monitor, service, began, events, t0)
        return {f"in flight on the host when {during}": inflight,
                "host's errors at the balancer": _errors(monitor, service)}

    await ground.ensure_healthy()
    return await run_fault(ground, name, fault)


async def link_cut(ground: Ground, host: str = "h2", seconds: float = 10.0) -> Outcome:
    """``ip link set <host's veth> down`` for ``seconds``, then up."""
    return await _timed_fault(ground, host, f"link cut {seconds:g}s", seconds,
                              ("cut", lambda: ground.network.cut(host)),
                              ("restored", lambda: ground.network.restore(host)), "cut")


async def lossy(ground: Ground, host: str = "h2", percent: float = 5.0,
                seconds: float = 10.0) -> Outcome:
    """``percent`` % of the host's packets dropped each way for ``seconds``, then none."""
    return await _timed_fault(ground, host, f"{percent:g}% loss {seconds:g}s", seconds,
                              ("loss on", lambda: ground.network.lose(host, percent)),
                              ("loss off", lambda: ground.network.unlose(host)), "losing packets")


async def freeze(ground: Ground, host: str = "h3", seconds: float = 10.0) -> Outcome:
    """SIGSTOP the host's service with requests in flight, SIGCONT ``seconds`` later."""
    service = ground.services[host]
    return await _timed_fault(ground, host, f"frozen {seconds:g}s", seconds,
                              ("SIGSTOP", lambda: service.signal(signal.SIGSTOP)),
                              ("SIGCONT", lambda: service.signal(signal.SIGCONT)), "frozen")


async def kill(ground: Ground, host: str = "h1", down: float = 3.0) -> Outcome:
    """SIGKILL the host's service with requests in flight; start it again ``down`` s later."""
    service = ground.services[host]

    async def killed(monitor: Monitor, events: dict[str, float], t0: float) -> dict[str, Any]:
        inflight = await _wait_inflight(monitor.balancer, service)
        await asyncio.to_thread(service.kill)
        at = time.monotonic()
        events["SIGKILL"] = at - t0
        await asyncio.sleep(down)  # the fault's duration
        service.start()
        events["started"] = time.monotonic() - t0
        events["ready"] = await service.wait_ready_async(START_TIMEOUT) - t0
        await ground.taken_back(monitor, service, at, events, t0)
        return {"in flight on the host when killed": inflight,
                "host's errors at the balancer": _errors(monitor, service)}

    await ground.ensure_healthy()
    return await run_fault(ground, "SIGKILL", killed)


def _errors(monitor: Monitor, service: NsService) -> dict[str, int]:
    """The host's error totals at the balancer in the monitor's last sample, less its first."""
    if not monitor.samples:
        return {}
    first = monitor.samples[0][1].get(service.id, {}).get("totals", {}).get("errors", {})
    last = monitor.samples[-1][1].get(service.id, {}).get("totals", {}).get("errors", {})
    return {k: v - first.get(k, 0) for k, v in last.items() if v - first.get(k, 0)}


@contextlib.asynccontextmanager
async def _started(ground: Ground, procs: list[Proc]) -> AsyncIterator[None]:
    ground.extra += procs
    try:
        await asyncio.to_thread(start_all, procs)
        yield
    finally:
        await asyncio.to_thread(stop_all, procs)
        for proc in procs:
            ground.extra.remove(proc)


async def delayed(ground: Ground, policy: str, host: str = "h3", delay_ms: float = 100.0,
                  rounds: int = 3, seconds: float = 6.0, warmup: float = 1.0) -> tuple[Outcome, Outcome]:
    """Two balancers with ``policy``: one in front of the three services, one that reaches
    ``host`` through a proxy adding ``delay_ms`` per round trip. The same load through each in
    turn, ``rounds`` times (``warmup`` s, then ``seconds`` measured), so that whatever else the
    machine does falls on both alike: (all healthy, one delayed)."""
    await ground.ensure_healthy()
    proxy = DelayProxy(ground.network[host], delay_ms)
    direct = [s.url for s in ground.services.values()]
    via = [proxy.url if name == host else s.url for name, s in ground.services.items()]
    args = ("--policy", policy, "--log-level", "info")
    plain = NsBalancer(f"lb-{policy}", direct, *args, ports=(8090, 8091))
    slowed = NsBalancer(f"lb-{policy}-delayed", via, *args, ports=(8092, 8093))
    windows: dict[str, list[Window]] = {"healthy": [], f"{host} +{delay_ms:g} ms": []}
    ewma: dict[str, list[dict[str, float]]] = {label: [] for label in windows}
    async with _started(ground, [proxy, plain, slowed]):
        for _ in range(rounds):
            for balancer, label in zip((plain, slowed), windows, strict=True):
                await ground.ensure_healthy(balancer)
                async with ground.load(balancer.url) as load:
                    await asyncio.sleep(warmup)  # the balancer learns the latencies: not measured
                    before = requests(await balancer.backends())
                    since = time.monotonic()
                    await asyncio.sleep(seconds)  # the measurement window
                    until = time.monotonic()
                    status = await balancer.backends()
                after = requests(status)
                windows[label].append(Window.of(load.calls, since, until, before, after))
                ewma[label].append({host_of(bid): b["ewma_ms"] for bid, b in sorted(status.items())})
    plain_result, slowed_result = (outcome(label, policy, w) for label, w in windows.items())
    for result in (plain_result, slowed_result):
        result.notes["balancer's ewma_ms at the end of each window"] = ewma[result.scenario]
    _say(plain_result.summary())
    _say(slowed_result.summary())
    return plain_result, slowed_result
