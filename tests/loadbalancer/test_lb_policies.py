"""The balancing policies on real Backend objects, driven by a small discrete-event simulation
(closed loop: each finished request is replaced by a new one)."""

from __future__ import annotations

import heapq
import random

import pytest

from loadbalancer.backend import Backend, Tuning
from loadbalancer.errors import ConfigError
from loadbalancer.policies import POLICIES, ChoiceContext, make_policy
from loadbalancer.settings import BackendSpec
from loadbalancer.speed import FLOOR, MIN_ANSWERS, SpeedFactors


def backends(*weights: int) -> list[Backend]:
    return [
        Backend(BackendSpec(url=f"http://10.0.0.{i}:80", weight=w), Tuning(), now=0.0, warm=True)
        for i, w in enumerate(weights, start=1)
    ]


def simulate(
    policy_name: str,
    pool: list[Backend],
    latencies: list[float],
    *,
    concurrency: int,
    requests: int = 4000,
    seed: int = 7,
    start: float = 0.0,
) -> list[float]:
    """Shares of ``requests`` per backend; backend i answers in ``latencies[i]`` seconds."""
    rng = random.Random(seed)
    policy = make_policy(policy_name, rng=random.Random(seed))
    index = {b.id: i for i, b in enumerate(pool)}
    counts = [0] * len(pool)
    events: list[tuple[float, int, int, float]] = []
    now, sequence = start, 0

    def dispatch() -> None:
        nonlocal sequence
        backend = policy.choose(ChoiceContext(pool, [b.effective_weight(now) for b in pool], now))
        i = index[backend.id]
        backend.inflight += 1
        counts[i] += 1
        sequence += 1
        took = latencies[i] * rng.uniform(0.8, 1.2)
        heapq.heappush(events, (now + took, sequence, i, took))

    for _ in range(concurrency):
        dispatch()
    while sum(counts) < requests:
        finished_at, _, i, took = heapq.heappop(events)
        now = finished_at
        pool[i].inflight -= 1
        pool[i].observe_latency(took, now)
        dispatch()
    return [c / sum(counts) for c in counts]


def test_registry_has_the_six_policies() -> None:
    assert set(POLICIES) == {"least_request", "round_robin", "random", "peak_ewma", "ring_hash", "maglev"}
    with pytest.raises(ConfigError, match="unknown policy"):
        make_policy("fastest")


def test_round_robin_matches_nginx_smooth_weighted_sequence() -> None:
    pool = backends(5, 1, 1)
    policy = make_policy("round_robin")
    names = {b.id: "abc"[i] for i, b in enumerate(pool)}
    picks = [names[policy.choose(ChoiceContext(pool, [5.0, 1.0, 1.0], 0.0)).id] for _ in range(14)]
    assert "".join(picks) == "aabacaa" * 2  # nginx's ngx_http_upstream_get_peer


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
@pytest.mark.parametrize("concurrency", [4, 16])
def test_slow_backend_gets_less_traffic(policy: str, concurrency: int) -> None:
    shares = simulate(policy, backends(1, 1), [0.010, 0.050], concurrency=concurrency)
    assert shares[1] < 0.3, shares  # 5x slower: well under its equal-weight half


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
@pytest.mark.parametrize(("concurrency", "slowdown"), [(3, 1.8), (8, 1.8), (8, 2.6), (32, 1.8)])
def test_a_host_slower_by_a_bad_link_gets_at_most_a_third_of_its_fair_share(
        policy: str, concurrency: int, slowdown: float) -> None:
    # Three equal hosts, one of them slower by a fixed delay (a bad link): in-flight balancing
    # alone would give it 3 / (2r + 1) of its fair share, 0.65 at r = 1.8.
    shares = simulate(policy, backends(1, 1, 1), [0.060, 0.060, 0.060 * slowdown],
                      concurrency=concurrency, requests=6000)
    assert shares[2] <= (1 / 3) * (1 / 3), shares


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_speed_factors_leave_equally_fast_hosts_at_their_weights(policy: str) -> None:
    # Jitter of +-20% around the same latency stays inside the band: the weights hold.
    shares = simulate(policy, backends(2, 1, 1), [0.050, 0.050, 0.050], concurrency=16, requests=6000)
    assert abs(shares[0] - 0.5) <= 0.03 and abs(shares[1] - shares[2]) <= 0.03, shares


@pytest.mark.parametrize("policy", ["least_request", "peak_ewma"])
def test_a_slow_host_that_recovers_gets_its_share_back(policy: str) -> None:
    pool = backends(1, 1, 1)
    slowed = simulate(policy, pool, [0.060, 0.060, 0.160], concurrency=8, requests=3000)
    assert slowed[2] < 0.05, slowed  # starved while slow: few answers to re-measure it by
    for backend in pool:
        backend.inflight = 0  # the first run's last requests never end
    # Fast again: 3000 requests are about 22 s of this simulated time, and the third host is
    # re-measured by the few answers it still gets.
    recovered = simulate(policy, pool, [0.060, 0.060, 0.060], concurrency=8, requests=3000,
                         start=pool[0].ewma_stamp)
    assert recovered[2] > 0.25, recovered


@pytest.mark.parametrize("policy", ["round_robin", "random"])
def test_latency_blind_policies_keep_the_split(policy: str) -> None:
    shares = simulate(policy, backends(1, 1), [0.010, 0.050], concurrency=8)
    assert abs(shares[0] - 0.5) < 0.03, shares


@pytest.mark.parametrize(
    ("policy", "concurrency"),
    [(p, c) for p in ("least_request", "round_robin", "random") for c in (1, 8, 32)]
    # Peak EWMA weighs cost, not shares: sequential traffic goes to the cheapest backend.
    + [("peak_ewma", 8), ("peak_ewma", 32)],
)
def test_weights_split_traffic_with_equal_latency(policy: str, concurrency: int) -> None:
    shares = simulate(policy, backends(3, 1), [0.010, 0.010], concurrency=concurrency)
    assert abs(shares[0] - 0.75) <= 0.03, shares


def test_least_request_prefers_fewer_in_flight_per_weight() -> None:
    pool = backends(1, 1, 1)
    pool[0].inflight, pool[1].inflight, pool[2].inflight = 5, 0, 5
    policy = make_policy("least_request", rng=random.Random(1))
    picks = [policy.choose(ChoiceContext(pool, [1.0, 1.0, 1.0], 0.0)).id for _ in range(300)]
    # Power of two choices: the idle one wins whenever drawn (2 of 3 draws pairs include it).
    assert picks.count(pool[1].id) / len(picks) > 0.55


def test_single_candidate_is_returned() -> None:
    pool = backends(1)
    for name in POLICIES:
        for key in (None, b"cam-1"):  # every policy takes a key; the hashing ones use it
            assert make_policy(name).choose(ChoiceContext(pool, [1.0], 0.0, key)) is pool[0]


def test_speed_factors_ignore_sub_millisecond_differences_and_unmeasured_hosts() -> None:
    pool = backends(1, 1, 1)
    for _ in range(MIN_ANSWERS):
        pool[0].observe_latency(0.0004, 0.0)
        pool[1].observe_latency(0.0012, 0.0)  # three times slower, but by under a millisecond
    pool[2].observe_latency(0.5, 0.0)  # one answer says little
    speed = SpeedFactors()
    assert list(speed.adjust(pool, [1.0, 1.0, 1.0], 0.0)) == [1.0, 1.0, 1.0]
    for _ in range(MIN_ANSWERS):
        pool[1].observe_latency(0.040, 1.0)
    assert speed.adjust(pool, [1.0, 1.0, 1.0], 1.0)[1] == FLOOR
