"""``yoloserve lb``: one click option per setting, generated from :class:`LBSettings`, so that
every flag is also ``YOLOSERVE_LB_<NAME>`` in the environment. A flag given wins over the env."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from loadbalancer.errors import ConfigError
from loadbalancer.settings import ENV_PREFIX, LBSettings, load_settings

__all__ = ["lb_command"]

F = typing.TypeVar("F", bound=Callable[..., Any])


def _click_type(annotation: Any) -> Any:
    """The click parameter type of a settings field (``X | None`` counts as ``X``)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)])
    if annotation is Path:
        return click.Path(dir_okay=False, path_type=Path)
    if annotation is SecretStr:
        return str
    return annotation


def _option(name: str, field: FieldInfo) -> Callable[[F], F]:
    env = f"[env: {ENV_PREFIX}{name.upper()}]"
    help_text = f"{field.description or ''} {env}".strip()
    if name == "backends":
        return click.option(
            "--backend",
            "backends",
            multiple=True,
            metavar="URL[=WEIGHT]",
            help=f"A backend, repeatable. {env}",
        )
    flag = "--" + name.replace("_", "-")
    if field.annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    default = field.get_default(call_default_factory=True)
    shown = "" if default is None or name == "admin_token" else f" (default: {default})"
    return click.option(flag, name, type=_click_type(field.annotation), default=None, help=help_text + shown)


def _settings_options(func: F) -> F:
    for name, field in reversed(list(LBSettings.model_fields.items())):
        func = _option(name, field)(func)
    return func


@click.command("lb", context_settings={"help_option_names": ["-h", "--help"]})
@_settings_options
def lb_command(**options: Any) -> None:
    """Run the load balancer: proxies every path to the backends, admin API on its own port."""
    from loadbalancer.server import run

    if not options.get("backends"):
        options.pop("backends", None)  # not given: the env or the config file decides
    try:
        settings = load_settings(**options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        run(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
