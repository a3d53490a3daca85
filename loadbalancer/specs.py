"""How backends and DNS names are written, in flags, the environment, config files and the admin
API: ``BackendSpec`` (``http[s]://HOST:PORT[=WEIGHT]``, gRPC's ``[https://]HOST:PORT[=WEIGHT]``)
and ``DiscoverSpec`` (``dns[+https]://NAME:PORT``), their parsers, and ``IP[:PORT]`` of a
nameserver. :mod:`loadbalancer.settings` holds them in :class:`~loadbalancer.settings.LBSettings`
and re-exports them."""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "BackendSpec",
    "DiscoverSpec",
    "dns_name",
    "parse_backends",
    "parse_discover",
    "parse_grpc_backends",
    "parse_host_port",
]


def dns_name(name: str) -> str:
    """``name`` lowercased, without a final dot, if it is a DNS name; ValueError otherwise."""
    name = name.strip().rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or not all(0 < len(label) <= 63 for label in labels) or not all(
        c.isascii() and (c.isalnum() or c in "-_") for label in labels for c in label
    ):
        raise ValueError(f"not a DNS name: {name!r}")
    return name


class BackendSpec(BaseModel):
    """One backend: ``http://host:port`` or ``https://host:port`` and an integer weight; an
    ``https://`` one may name ``server_name``, the name its certificate is checked against (and
    sent as SNI) instead of its host: a discovered address is checked against its DNS name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    weight: int = Field(default=1, ge=1, le=10_000)
    server_name: str | None = None

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
            raise ValueError(f"backend URL must be http://host:port or https://host:port, got {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"backend URL must not have a path or query: {url!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{parts.scheme}://{host}:{parts.port}"

    @field_validator("server_name")
    @classmethod
    def _check_server_name(cls, name: str | None) -> str | None:
        return None if name is None else dns_name(name)

    @model_validator(mode="after")
    def _server_name_needs_tls(self) -> BackendSpec:
        if self.server_name is not None and not self.tls:
            raise ValueError(f"server_name is for https:// backends, not {self.url}")
        return self

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | BackendSpec) -> BackendSpec:
        """``URL``, ``URL=WEIGHT`` or a mapping with ``url``, ``weight`` and ``server_name``."""
        if isinstance(spec, BackendSpec):
            return spec
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        url, sep, weight = spec.strip().rpartition("=")
        if not sep:
            return cls(url=spec)
        if not weight.strip().isdigit():
            raise ValueError(f"backend weight must be a positive integer: {spec!r}")
        return cls(url=url, weight=int(weight))

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    @property
    def tls(self) -> bool:
        """An ``https://`` backend: spoken to over TLS, its certificate verified."""
        return self.url.startswith("https://")

    @property
    def verified_name(self) -> str:
        """The name (or IP address) its certificate must carry: ``server_name`` or the host."""
        return self.server_name or self.host

    @property
    def id(self) -> str:
        """The backend's id: ``host:port``, stable across reloads."""
        return self.url.partition("://")[2]


def _items(value: Any, what: str) -> list[Any]:
    """A list of a setting's entries: a list, a tuple (repeated flags) or a string separated by
    commas or newlines (the environment)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = [part for part in value.replace("\n", ",").split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError(f"{what} must be a list or a comma-separated string")
    return list(value)


def parse_backends(value: Any) -> list[BackendSpec]:
    return [BackendSpec.parse(item) for item in _items(value, "backends")]


def parse_grpc_backends(value: Any) -> list[BackendSpec]:
    """gRPC backends as ``HOST:PORT[=WEIGHT]`` (h2c; ``http://`` in front is accepted) or
    ``https://HOST:PORT[=WEIGHT]`` (gRPC over TLS, verified as ``https://`` HTTP backends are)."""
    out = []
    for item in _items(value, "grpc_backends"):
        if isinstance(item, str) and "://" not in item:
            item = "http://" + item.strip()
        out.append(BackendSpec.parse(item))
    return out


_DISCOVER_SCHEMES = {"dns": "http", "dns+http": "http", "dns+https": "https"}
_DISCOVER_FORM = "dns://NAME:PORT or dns+https://NAME:PORT"


class DiscoverSpec(BaseModel):
    """A DNS name whose A and AAAA records are backends on ``port``: ``dns://NAME:PORT`` (plain
    HTTP or h2c), or ``dns+https://NAME:PORT`` (TLS; each address's certificate is checked
    against NAME, which is also its SNI, as Envoy's ``auto_sni`` does for a DNS cluster)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return dns_name(name)

    @classmethod
    def parse(cls, spec: str | dict[str, Any] | DiscoverSpec) -> DiscoverSpec:
        """``dns://NAME:PORT``, ``dns+https://NAME:PORT`` or a mapping with ``name``, ``port``
        and optionally ``scheme`` (``http`` or ``https``)."""
        if isinstance(spec, DiscoverSpec):
            return spec
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        parts = urlsplit(spec.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        scheme = _DISCOVER_SCHEMES.get(parts.scheme)
        if scheme is None or not parts.hostname or port is None:
            raise ValueError(f"discover must be {_DISCOVER_FORM}, got {spec!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"discover must be {_DISCOVER_FORM}, without a path or query: {spec!r}")
        return cls(name=parts.hostname, port=port, scheme=scheme)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def url(self) -> str:
        """``dns://NAME:PORT`` or ``dns+https://NAME:PORT``: how logs, metrics and
        ``/lb/status`` name it."""
        return f"{'dns+https' if self.tls else 'dns'}://{self.name}:{self.port}"


def parse_discover(value: Any) -> list[DiscoverSpec]:
    specs = list(dict.fromkeys(DiscoverSpec.parse(item) for item in _items(value, "discover")))
    followed: dict[tuple[str, int], str] = {}  # the same name twice is followed once
    for spec in specs:
        other = followed.setdefault((spec.name, spec.port), spec.url)
        if other != spec.url:
            raise ValueError(f"{other} and {spec.url} name the same backends: give one")
    return specs


def parse_host_port(value: str, default_port: int = 53) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port); ValueError otherwise."""
    text = value.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
        if rest:
            port = _port(rest[1:], value)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, value)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"the DNS server must be an IP address with an optional port: {value!r}") from None
    return str(address), port


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"bad port in {value!r}")
    return int(text)
