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
_DISCOVER = click.option("--discover", "discover", multiple=True, metavar="dns://NAME:PORT",
                         help="Backends from a DNS name's A/AAAA records, followed at their TTL; "
                              f"repeatable. [env: {ENV_PREFIX}DISCOVER]")


@click.command("lb", context_settings={"help_option_names": ["-h", "--help"]})
@settings_options(LBSettings, special={"backends": _BACKENDS, "discover": _DISCOVER})
def lb_command(**options: Any) -> None:
    """Run the load balancer: proxies every path to the backends, admin API on its own port."""
    from loadbalancer.server import run

    for repeated in ("backends", "discover"):
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
