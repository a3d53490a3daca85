"""``yoloserve lb``: one click option per setting, generated from :class:`LBSettings`, so that
every flag is also ``YOLOSERVE_LB_<NAME>`` in the environment. A flag given wins over the env."""

from __future__ import annotations

from typing import Any

import click

from loadbalancer.errors import ConfigError
from loadbalancer.settings import ENV_PREFIX, LBSettings, load_settings
from wire.options import settings_options

__all__ = ["lb_command"]

_BACKENDS = click.option("--backend", "backends", multiple=True, metavar="URL[=WEIGHT]",
                         help=f"A backend, repeatable. [env: {ENV_PREFIX}BACKENDS]")
_DISCOVER = click.option("--discover", "discover", multiple=True, metavar="dns[+https]://NAME:PORT",
                         help="Backends from a DNS name's A/AAAA records, followed at their TTL; "
                              "dns+https:// makes them HTTPS backends whose certificates must name "
                              f"NAME; repeatable. [env: {ENV_PREFIX}DISCOVER]")

_GRPC_BACKENDS = click.option("--grpc-backend", "grpc_backends", multiple=True,
                              metavar="[https://]HOST:PORT[=WEIGHT]",
                              help="A gRPC backend (h2c; over TLS with https://), repeatable; "
                                   f"needs --grpc-port. [env: {ENV_PREFIX}GRPC_BACKENDS]")
_DISCOVER_GRPC = click.option("--discover-grpc", "discover_grpc", multiple=True,
                              metavar="dns[+https]://NAME:PORT",
                              help="gRPC backends from a DNS name's A/AAAA records (over TLS with "
                                   f"dns+https://); repeatable. [env: {ENV_PREFIX}DISCOVER_GRPC]")


@click.command("lb", context_settings={"help_option_names": ["-h", "--help"]})
@settings_options(LBSettings, special={"backends": _BACKENDS, "discover": _DISCOVER,
                                        "grpc_backends": _GRPC_BACKENDS,
                                        "discover_grpc": _DISCOVER_GRPC})
def lb_command(**options: Any) -> None:
    """Run the load balancer: proxies every path to the backends, admin API on its own port."""
    from loadbalancer.server import run

    for repeated in ("backends", "discover", "grpc_backends", "discover_grpc"):
        if not options.get(repeated):
            options.pop(repeated, None)  # not given: the env or the config file decides
    try:
        settings = load_settings(**options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        run(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
