"""Consistent hashing (``ring_hash``, ``maglev``): the request key, the hash spaces, the policies
and the cluster in process; one test through a real ``yoloserve lb``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from loadbalancer.backend import Backend, Health, Tuning
from loadbalancer.cluster import Cluster
from loadbalancer.errors import ConfigError
from loadbalancer.hashing import HashSpace, Maglev, Ring, key_hash, request_key, stream_id, walk
from loadbalancer.policies import POLICIES, ChoiceContext, ConsistentHash, Policy, make_policy
from loadbalancer.settings import BackendSpec, load_settings
from tests.loadbalancer.harness import BackendProc, LBProc, start_backends

KINDS = {"ring_hash": Ring, "maglev": Maglev}
KEYS = [key_hash(b"cam-%d" % i) for i in range(100_000)]


def hosts(n: int, weights: list[int] | None = None) -> list[tuple[str, int]]:
    return [(f"10.0.0.{i}:8000", (weights or [1] * n)[i]) for i in range(n)]


def owners(space: HashSpace) -> list[str]:
    return [space.owner(h) for h in KEYS]


def moved(before: list[str], after: list[str]) -> float:
    return sum(a != b for a, b in zip(before, after, strict=True)) / len(KEYS)


@pytest.fixture(scope="module")
def spaces() -> dict[tuple[str, int], list[str]]:
    """Owners of every key for 4 and 5 hosts, and for 4 less each one, per design (built once)."""
    result = {}
    for kind, cls in KINDS.items():
        result[kind, 4] = owners(cls(hosts(4)))
        result[kind, 5] = owners(cls(hosts(5)))
        for gone in range(4):
            result[kind, -gone - 1] = owners(cls([h for i, h in enumerate(hosts(4)) if i != gone]))
    return result


# -- the key -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/v1/streams/cam-1/frames", b"cam-1"),
        (b"/v1/streams/cam-1", b"cam-1"),  # DELETE
        (b"/v1/streams/cam-1/", b"cam-1"),
        (b"/v1/streams/Cam_1.v2/frames?seq=3", b"Cam_1.v2"),
        (b"/v1/streams/cam-1?x=1", b"cam-1"),
        (b"/v1/streams/a", b"a"),
        (b"/v1/streams/" + b"x" * 128 + b"/frames", b"x" * 128),
        (b"http://lb:8080/v1/streams/cam-1/frames", b"cam-1"),  # absolute form
        (b"/v1/streams/" + b"x" * 129 + b"/frames", None),
        (b"/v1/streams/cam%201/frames", None),
        (b"/v1/streams/cam 1/frames", None),
        (b"/v1/streams//frames", None),
        (b"/v1/streams/", None),
        (b"/v1/streams", None),
        (b"/v1/streamsx/cam-1", None),
        (b"/v1/detect", None),
        (b"/x/v1/streams/cam-1", None),
    ],
)
def test_stream_id_from_the_path(target: bytes, expected: bytes | None) -> None:
    assert stream_id(target) == expected


def test_request_key_is_the_path_s_stream_id_else_the_header() -> None:
    header = b"x-stream-id"
    headers = [(b"Host", b"lb"), (b"X-Stream-ID", b" cam-9 ")]
    assert request_key(b"/v1/streams/cam-1/frames", headers, header) == b"cam-1"  # the path wins
    assert request_key(b"/v1/detect", headers, header) == b"cam-9"  # any case, trimmed
    assert request_key(b"/v1/detect", [(b"x-stream-id", b"  ")], header) is None
    assert request_key(b"/v1/detect", [(b"host", b"lb")], header) is None
    assert request_key(b"/v1/detect", headers, b"host") == b"lb"


def test_hash_header_setting() -> None:
    assert load_settings().hash_header == "x-stream-id"
    assert load_settings(hash_header=" X-Camera ").hash_header == "x-camera"
    for bad in ("x-request-id", "Connection", "bad header", ""):
        with pytest.raises(ConfigError, match="hash_header"):
            load_settings(hash_header=bad)
    for policy in KINDS:
        assert load_settings(policy=policy).policy == policy


# -- the hash spaces -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_independent_of_the_order_of_hosts(kind: str) -> None:
    cls = KINDS[kind]
    a, b = cls(hosts(4)), cls(list(reversed(hosts(4))))
    sample = KEYS[:2000]
    assert [a.owner(h) for h in sample] == [b.owner(h) for h in sample]
    # fixed hashes: the same key has the same owner in every process and release
    assert cls(hosts(4)).owner(key_hash(b"cam-0")) == a.owner(key_hash(b"cam-0"))
    assert sorted(walk(a, KEYS[0])) == [0, 1, 2, 3]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weights", [[1, 1, 1, 1], [1, 2, 3, 4]])
def test_keys_split_by_weight(
    kind: str, weights: list[int], spaces: dict[tuple[str, int], list[str]]
) -> None:
    counts = Counter(spaces[kind, 4] if weights == [1] * 4 else owners(KINDS[kind](hosts(4, weights))))
    for host, weight in hosts(4, weights):
        share = counts[host] / len(KEYS)
        ideal = weight / sum(weights)
        assert abs(share - ideal) <= 0.10 * ideal, (host, share, ideal)


def test_ring_points_follow_weights_up_to_the_cap() -> None:
    ring = Ring(hosts(3, [1, 2, 5]))
    assert ring.counts() == [1024, 2048, 5120]
    big = Ring([("a:1", 10_000), ("b:1", 1)], max_points=1 << 12)
    assert sum(big.counts()) <= (1 << 12) + 1 and big.counts()[1] == 1


def test_maglev_table_follows_weights() -> None:
    table = Maglev(hosts(3, [1, 2, 5]), size=65537)
    counts = table.counts()
    assert sum(counts) == 65537
    assert [round(c / 65537 * 8, 2) for c in counts] == [1.0, 2.0, 5.0]
    with pytest.raises(ValueError, match="prime"):
        Maglev(hosts(2), size=65536)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gone", range(4))
def test_removing_a_host_moves_only_its_keys(
    kind: str, gone: int, spaces: dict[tuple[str, int], list[str]]
) -> None:
    before, after = spaces[kind, 4], spaces[kind, -gone - 1]
    host = hosts(4)[gone][0]
    extra = sum(a != b and a != host for a, b in zip(before, after, strict=True)) / len(KEYS)
    owned = before.count(host) / len(KEYS)
    assert host not in after
    if kind == "ring_hash":
        assert extra == 0.0  # its points leave the ring, no other point moves
    else:
        assert extra <= 0.002, extra  # measured 0.0003-0.0004: the table is refilled
    assert moved(before, after) <= 1.3 * 0.25  # the issue's bound: within 1.3x of the ideal 1/4
    assert abs(moved(before, after) - owned) <= 0.002


@pytest.mark.parametrize("kind", KINDS)
def test_adding_a_host_moves_about_one_nth(kind: str, spaces: dict[tuple[str, int], list[str]]) -> None:
    before, after = spaces[kind, 4], spaces[kind, 5]
    new = hosts(5)[4][0]
    extra = sum(a != b and b != new for a, b in zip(before, after, strict=True)) / len(KEYS)
    assert 0.8 * 0.2 <= moved(before, after) <= 1.2 * 0.2, moved(before, after)
    assert extra <= (0.0 if kind == "ring_hash" else 0.003), extra  # maglev: measured 0.0015


def test_ring_weight_change_moves_keys_to_that_host_only() -> None:
    before = owners(Ring(hosts(4)))
    heavier = hosts(4)
    heavier[2] = (heavier[2][0], 2)
    after = owners(Ring(heavier))
    assert all(a == b or b == heavier[2][0] for a, b in zip(before, after, strict=True))
    assert 0.12 <= moved(before, after) <= 0.18  # ideal: 2/5 - 1/4 = 0.15


# -- the policies --------------------------------------------------------------------------------
def backends(n: int, weights: list[int] | None = None) -> dict[str, Backend]:
    pool = [
        Backend(
            BackendSpec(url=f"http://10.0.1.{i}:80", weight=(weights or [1] * n)[i]),
            Tuning(),
            now=0.0,
            warm=True,
        )
        for i in range(n)
    ]
    return {b.id: b for b in pool}


STREAMS = [b"stream-%d" % i for i in range(4000)]


def owner(policy: Policy, key: bytes, members: dict[str, Backend], allowed: list[Backend]) -> Backend:
    """What ``policy`` chooses for ``key`` among ``allowed``, asked as the cluster asks."""
    return policy.choose(ChoiceContext(allowed, [1.0] * len(allowed), 0.0, key, members))


def test_both_are_registered_and_fall_back_to_least_request_without_a_key() -> None:
    assert {"ring_hash", "maglev"} <= set(POLICIES)
    members = backends(3)
    pool = list(members.values())
    for name in KINDS:
        policy = make_policy(name)
        assert isinstance(policy, ConsistentHash)
        picks = Counter(policy.choose(ChoiceContext(pool, [1.0] * 3, 0.0)).id for _ in range(300))
        assert sorted(picks.values()) == [100, 100, 100]  # least_request: weighted round-robin first


@pytest.mark.parametrize("kind", KINDS)
def test_an_unroutable_owner_s_keys_go_to_the_next_and_come_back(kind: str) -> None:
    policy = make_policy(kind)
    assert isinstance(policy, ConsistentHash)
    members = backends(4)
    everyone = list(members.values())
    before = [owner(policy, k, members, everyone) for k in STREAMS]
    down = everyone[1]
    others = [b for b in everyone if b is not down]
    during = [owner(policy, k, members, others) for k in STREAMS]
    after = [owner(policy, k, members, everyone) for k in STREAMS]
    assert policy.rebuilds == 1  # a host passed over is not a rebuild
    assert after == before
    for b, d in zip(before, during, strict=True):
        assert d is b if b is not down else d is not down
    # its keys spread over the others by their shares (a third each here), not onto one neighbour
    spread = Counter(d.id for b, d in zip(before, during, strict=True) if b is down and d is not None)
    total = sum(spread.values())
    tolerance = 0.3 if kind == "ring_hash" else 0.1  # measured: 0.15 ring, 0.01 maglev
    assert len(spread) == 3, spread
    assert all(abs(c / total * 3 - 1) <= tolerance for c in spread.values()), spread


@pytest.mark.parametrize("kind", KINDS)
def test_retries_take_the_key_s_next_backends_in_order(kind: str) -> None:
    policy = make_policy(kind)
    assert isinstance(policy, ConsistentHash)
    members = backends(4)
    everyone = list(members.values())
    for key in STREAMS[:200]:
        tried: list[Backend] = []
        while left := [b for b in everyone if b not in tried]:
            chosen = owner(policy, key, members, left)
            assert chosen not in tried
            tried.append(chosen)
        assert len(tried) == 4
        order = [policy.space.ids[i] for i in walk(policy.space, key_hash(key))]
        assert [b.id for b in tried] == order


@pytest.mark.parametrize("kind", KINDS)
def test_cluster_keeps_a_key_on_one_backend_and_rebuilds_only_on_changes(kind: str) -> None:
    policy = make_policy(kind)
    assert isinstance(policy, ConsistentHash)
    cluster = Cluster(policy, Tuning())
    for i in range(4):
        cluster.add(BackendSpec(url=f"http://10.0.2.{i}:80"), 0.0, warm=True)
    keys = STREAMS[:400]
    home = {k: cluster.choose(1.0, key=k) for k in keys}
    assert all(cluster.choose(1.5, key=k) is home[k] for k in keys)
    assert policy.rebuilds == 1
    owner = home[keys[0]]
    assert owner is not None
    # unhealthy, then healthy again: no rebuild, only its keys move and come back
    cluster.report_probe(owner, Health.UNHEALTHY, 2.0)
    away = {k: cluster.choose(2.0, key=k) for k in keys}
    assert all((away[k] is home[k]) == (home[k] is not owner) for k in keys)
    for t in (3.0, 4.0):
        cluster.report_probe(owner, Health.HEALTHY, t)
    assert {k: cluster.choose(5.0, key=k) for k in keys} == home
    cluster.update(owner.id, weight=None, drain=True)  # drained: the same
    assert {k: cluster.choose(6.0, key=k) for k in keys} == away
    assert policy.rebuilds == 1
    # removed: a rebuild over the other three; their keys stay (ring: exactly; maglev: ~all)
    cluster.remove(owner.id)
    gone = {k: cluster.choose(7.0, key=k) for k in keys}
    assert policy.rebuilds == 2
    kept = sum(gone[k] is home[k] for k in keys if home[k] is not owner)
    assert kept >= sum(home[k] is not owner for k in keys) - (0 if kind == "ring_hash" else 2)
    assert cluster.choose(8.0) is not None  # no key: least_request


# -- through a real balancer ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def trio() -> Iterator[list[BackendProc]]:
    procs = start_backends([BackendProc("a"), BackendProc("b"), BackendProc("c")])
    yield procs
    for p in procs:
        p.stop()


def test_a_stream_stays_on_one_backend_through_the_balancer(trio: list[BackendProc]) -> None:
    # ring_hash: removing a backend moves only its own keys, exactly (Maglev moves a few others too,
    # which the unit test above bounds), so every other stream must stay where it was
    lb = (
        LBProc([b.url for b in trio], "--policy", "ring_hash", "--health-interval", "0.5")
        .start()
        .wait_ready()
    )
    try:
        with httpx.Client(base_url=lb.url, timeout=5.0) as client:

            def upstreams(stream: str, n: int = 6) -> set[str]:
                seen = set()
                for seq in range(n):
                    r = client.post(f"/v1/streams/{stream}/frames", content=b"f", params={"seq": seq})
                    assert r.status_code == 200, r.text
                    seen.add(r.headers["X-Upstream"])
                r = client.post("/v1/detect", content=b"f", headers={"X-Stream-Id": stream})
                seen.add(r.headers["X-Upstream"])  # the header key: the same backend
                return seen

            streams = [f"cam-{i}" for i in range(12)]
            home = {}
            for s in streams:
                seen = upstreams(s)
                assert len(seen) == 1, (s, seen)
                home[s] = seen.pop()
            assert len(set(home.values())) > 1, home  # 12 streams over 3 backends
            owner = home["cam-0"]
            assert lb.admin("DELETE", f"/lb/backends/{owner}").status_code == 200
            after = {}
            for s in streams:
                seen = upstreams(s)
                assert len(seen) == 1 and owner not in seen, (s, seen)
                after[s] = seen.pop()
                if home[s] != owner:
                    assert after[s] == home[s], s  # the others' streams did not move
            # kill the backend cam-0 went to: it goes on, without a failed request, to the last
            second = after["cam-0"]
            next(b for b in trio if b.url.endswith(second)).stop()
            seen = upstreams("cam-0")
            assert len(seen) == 1 and seen.isdisjoint({owner, second}), seen
    finally:
        lb.stop()
