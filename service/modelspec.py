"""What ``--model NAME=PATH`` and ``--model-alias ALIAS=NAME:WEIGHT,...`` say, parsed and checked
before anything is loaded, so that a wrong name or a missing file stops the start at once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RAW_SUFFIX", "Alias", "ModelConfigError", "ModelSpec", "parse_alias", "parse_spec",
           "resolve_specs"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RAW_SUFFIX = "-raw"  # the Open Inference Protocol serves the network itself as NAME-raw


class ModelConfigError(ValueError):
    """The models or aliases to serve are wrong (a clear message for the person starting it)."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path


@dataclass(frozen=True)
class Alias:
    """A name that sends each request to one of ``targets``, chosen by weight."""

    name: str
    targets: tuple[tuple[str, float], ...]


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name) or name.endswith(RAW_SUFFIX):
        raise ModelConfigError(
            f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-', not ending in "
            f"{RAW_SUFFIX!r}")
    return name


def parse_spec(text: str) -> ModelSpec:
    """``NAME=PATH``, or a bare ``PATH`` named by its file's stem."""
    name, sep, path = text.partition("=")
    if not sep:
        return ModelSpec(_check_name(Path(text).stem, "model name"), Path(text))
    if not path:
        raise ModelConfigError(f"--model {text!r}: no path after '='")
    return ModelSpec(_check_name(name, "model name"), Path(path))


def parse_alias(text: str) -> Alias:
    """``ALIAS=NAME:WEIGHT,NAME:WEIGHT`` (a missing weight counts 1)."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ModelConfigError(f"--model-alias {text!r}: expected ALIAS=NAME:WEIGHT,NAME:WEIGHT")
    targets: list[tuple[str, float]] = []
    for part in rest.split(","):
        target, _, weight = part.strip().partition(":")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ModelConfigError(f"--model-alias {text!r}: weight {weight!r} is not a number") \
                from None
        if not value >= 0:
            raise ModelConfigError(f"--model-alias {text!r}: weights must not be negative")
        targets.append((target, value))
    if sum(w for _, w in targets) <= 0:
        raise ModelConfigError(f"--model-alias {text!r}: the weights add up to 0")
    return Alias(_check_name(name, "alias"), tuple(targets))


def resolve_specs(model: Path, models: list[str], aliases: list[str]
                  ) -> tuple[list[ModelSpec], dict[str, Alias]]:
    """The models to serve (the first is the default) and the aliases, checked: unique names,
    files that exist, aliases that name served models."""
    specs = [parse_spec(text) for text in models] or [parse_spec(str(model))]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ModelConfigError(f"two models are named {spec.name!r}")
        seen.add(spec.name)
        if not spec.path.is_file():
            raise ModelConfigError(f"model {spec.name!r}: no file at {spec.path}")
    table: dict[str, Alias] = {}
    for text in aliases:
        alias = parse_alias(text)
        if alias.name in seen or alias.name in table:
            raise ModelConfigError(f"alias {alias.name!r} is already the name of a model or alias")
        for target, _ in alias.targets:
            if target not in seen:
                raise ModelConfigError(f"alias {alias.name!r} names {target!r}, which is not "
                                       f"served (models: {', '.join(sorted(seen))})")
        table[alias.name] = alias
    return specs, table
