"""Command-line options generated from a settings class: one flag per setting, so that every flag
is also an environment variable (``<PREFIX><NAME>``) and no default is written twice. A flag that
is given wins over the environment; one that is not given leaves the setting to the environment.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

__all__ = ["given_options", "settings_options"]

Command = Callable[..., Any]
Decorator = Callable[[Command], Command]


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


def _option(name: str, field: FieldInfo, env_prefix: str) -> Decorator:
    env = f"[env: {env_prefix}{name.upper()}]"
    help_text = f"{field.description or ''} {env}".strip()
    flag = "--" + name.replace("_", "-")
    if typing.get_origin(field.annotation) is list:  # repeatable; the environment takes JSON
        (item,) = typing.get_args(field.annotation)
        return click.option(flag, name, type=_click_type(item), multiple=True,
                            help=f"{help_text} (repeatable; the variable takes a JSON list)")
    if _click_type(field.annotation) is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
    default = field.get_default(call_default_factory=True)
    secret = field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)
    shown = "" if default is None or secret else f" (default: {default})"
    return click.option(flag, name, type=_click_type(field.annotation), default=None,
                         help=help_text + shown)


def settings_options(
    settings: type[BaseSettings],
    *,
    special: Mapping[str, Decorator] | None = None,
    skip: Collection[str] = (),
) -> Decorator:
    """A decorator adding one click option per field of ``settings``; ``special`` replaces the
    generated option of a field, ``skip`` leaves fields to the environment only (secrets)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    special = special or {}

    def decorate(func: Command) -> Command:
        for name, field in reversed(list(settings.model_fields.items())):
            if name in skip:
                continue
            func = (special.get(name) or _option(name, field, prefix))(func)
        return func

    return decorate


def given_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Only the flags that were typed (the environment supplies the rest)."""
    return {k: v for k, v in options.items() if v is not None and v != ()}
