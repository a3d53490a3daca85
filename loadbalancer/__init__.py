"""yoloserve's load balancer: a standalone asyncio reverse proxy in front of the service.

Weighted least request (power of two choices), round robin, random and peak EWMA; active health
checks on ``/health/ready``; outlier ejection; panic threshold; slow start; retries elsewhere
under a retry budget and the caller's deadline; backends found by DNS (``--discover``); an
admin API and Prometheus metrics.

Imports nothing heavy: no torch, OpenCV or numpy.
"""

from loadbalancer.backend import Backend, Health
from loadbalancer.errors import ConfigError, LoadBalancerError
from loadbalancer.policies import POLICIES, ChoiceContext, Policy
from loadbalancer.server import LoadBalancer, run
from loadbalancer.settings import BackendSpec, DiscoverSpec, LBSettings, load_settings

__all__ = [
    "POLICIES",
    "Backend",
    "BackendSpec",
    "ChoiceContext",
    "ConfigError",
    "DiscoverSpec",
    "Health",
    "LBSettings",
    "LoadBalancer",
    "LoadBalancerError",
    "Policy",
    "load_settings",
    "run",
]
