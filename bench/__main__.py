"""``python -m bench SCENARIO [args]`` and ``yoloserve bench SCENARIO [args]``."""

from __future__ import annotations

import importlib
import sys

SCENARIOS = {
    "engine": ("bench.engine_throughput", "forward pass and Engine.infer per batch size"),
    "batcher": ("bench.batcher_overhead", "batcher overhead with a no-op batch_fn"),
    "served": ("bench.served", "HTTP throughput and latency with and without batching"),
    "naive": ("bench.served", "alias of served (it runs the naive baseline too)"),
    "scaleout": ("bench.scaleout", "two processes behind the balancer vs one"),
    "lb": ("bench.lb_vs_nginx", "the balancer against nginx"),
    "grpc": ("bench.grpc", "gRPC against HTTP; the balancer against nginx grpc_pass"),
    "grpc_micro": ("bench.grpc_micro", "the balancer's Python cost per gRPC call, without sockets"),
    "lb_micro": ("bench.lb_micro", "the balancer's Python cost per HTTP request, without sockets"),
    "soak": ("bench.soak", "20,000 requests through the balancer and two services"),
    "scalesim": ("bench.scalesim", "the balancer in front of 2 to 32 stand-in hosts"),
    "multihost": ("bench.multihost", "faults on three namespace hosts behind the balancer"),
    "shared": ("bench.shared", "the service without and with Redis (shared cache, rate limit)"),
    "precision": ("bench.precision", "served at each precision against the unavoidable work"),
    "streams": ("bench.streams", "video streams with tracking: one service vs model.track per stream"),
    "models": ("bench.models", "one device: a service with two models against one with one"),
    "sidebyside": ("bench.sidebyside", "served or streams, this checkout against another, alternating"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SCENARIOS:
        for name, (_, what) in SCENARIOS.items():
            print(f"{name:10s} {what}")
        return 0 if not argv or argv[0] == "list" else 2
    module = importlib.import_module(SCENARIOS[argv[0]][0])
    code: int = module.main(argv[1:])
    return code


if __name__ == "__main__":
    raise SystemExit(main())
