"""Settings of the load balancer: one pydantic-settings class, built by the CLI at start.

Sources, highest priority first: keyword arguments (the CLI flags actually given), the environment
(``YOLOSERVE_LB_`` prefix), the config file (``--config`` / ``YOLOSERVE_LB_CONFIG``, YAML or TOML),
then the defaults below. Durations are seconds, percentages 0-100.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from loadbalancer.errors import ConfigError
from loadbalancer.specs import (
    BackendSpec,
    DiscoverSpec,
    dns_name,
    parse_backends,
    parse_discover,
    parse_grpc_backends,
    parse_host_port,
)
from wire.headers import HOP_BY_HOP, REQUEST_ID, REQUEST_TIMEOUT_MS

__all__ = [
    "ENV_PREFIX",
    "BackendSpec",
    "DiscoverSpec",
    "LBSettings",
    "dns_name",
    "load_config_file",
    "load_settings",
    "parse_backends",
    "parse_discover",
    "parse_grpc_backends",
    "parse_host_port",
]

ENV_PREFIX = "YOLOSERVE_LB_"
PolicyName = Literal["least_request", "round_robin", "random", "peak_ewma", "ring_hash", "maglev"]
# Headers the balancer consumes or drops: not in a request's forwarded headers, so not a hash key.
_UNHASHABLE_HEADERS = HOP_BY_HOP | {"content-length", "expect", REQUEST_ID, REQUEST_TIMEOUT_MS,
                                   "x-forwarded-for"}
MAX_CONFIG_BYTES = 1 << 20


class LBSettings(BaseSettings):
    """Every option of ``yoloserve lb``; each is also ``YOLOSERVE_LB_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    backends: Annotated[list[BackendSpec], NoDecode] = Field(
        default_factory=list, description="Backends as URL[=WEIGHT], comma-separated in the env."
    )
    discover: Annotated[list[DiscoverSpec], NoDecode] = Field(
        default_factory=list,
        description="DNS names whose A/AAAA records are backends, as dns://NAME:PORT (HTTP) or "
        "dns+https://NAME:PORT (HTTPS, certificates checked against NAME).",
    )
    grpc_backends: Annotated[list[BackendSpec], NoDecode] = Field(
        default_factory=list, description="gRPC backends as HOST:PORT[=WEIGHT] (h2c) or "
        "https://HOST:PORT[=WEIGHT] (TLS), comma-separated in the env; balanced per call on "
        "--grpc-port."
    )
    discover_grpc: Annotated[list[DiscoverSpec], NoDecode] = Field(
        default_factory=list, description="DNS names whose A/AAAA records are gRPC backends, as "
        "dns://NAME:PORT (h2c) or dns+https://NAME:PORT (TLS, certificates checked against NAME)."
    )
    grpc_port: int | None = Field(None, ge=0, le=65535, description="Port the gRPC proxy listens "
                                  "on, on --host (h2c; TLS with --tls-cert); None: off.")
    grpc_connections_per_backend: int = Field(4, ge=1, le=256, description="HTTP/2 connections "
                                              "to one gRPC backend at most.")
    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the proxy listens on.")
    admin_host: str = Field("127.0.0.1", description="Address of the admin API.")
    admin_port: int = Field(8081, ge=0, le=65535, description="Port of the admin API.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token the admin API requires (prefer the env: flags show in ps)."
    )
    policy: PolicyName = Field("least_request", description="Balancing policy.")
    hash_header: str = Field(
        "x-stream-id",
        description="ring_hash/maglev: header whose value is the key when the path has no "
        "/v1/streams/{id} (none: least_request).",
    )
    config: Path | None = Field(None, description="YAML or TOML file with these settings.")
    # Active health checks.
    health_path: str = Field("/health/ready", description="Path probed on each backend.")
    health_interval: float = Field(2.0, gt=0, description="Seconds between probes.")
    health_jitter: float = Field(0.2, ge=0, le=1, description="Fraction of the interval.")
    health_timeout: float = Field(1.0, gt=0, description="Seconds a probe may take.")
    healthy_threshold: int = Field(2, ge=1, description="Passes to mark an unhealthy one healthy.")
    unhealthy_threshold: int = Field(2, ge=1, description="Failures to mark a backend unhealthy.")
    overloaded_weight: float = Field(0.25, gt=0, le=1, description="Weight factor when overloaded.")
    # Outlier detection, panic, slow start.
    outlier_consecutive_failures: int = Field(5, ge=1, description="Failures in a row to eject.")
    outlier_base_ejection: float = Field(30.0, gt=0, description="Ejection time per ejection.")
    outlier_max_ejection: float = Field(300.0, gt=0, description="Cap on one ejection time.")
    outlier_max_ejection_percent: float = Field(50.0, ge=0, le=100, description="Max % ejected.")
    panic_threshold: float = Field(50.0, ge=0, le=100, description="Healthy % below which all go.")
    slow_start_window: float = Field(30.0, ge=0, description="Ramp-up seconds; 0 turns it off.")
    slow_start_aggression: float = Field(1.0, gt=0, description="Ramp-up curve exponent.")
    slow_start_min_weight_percent: float = Field(10.0, gt=0, le=100, description="Ramp start %.")
    # DNS discovery.
    dns_server: str | None = Field(
        None, description="Nameserver as IP[:PORT] for --discover (default: /etc/resolv.conf's)."
    )
    dns_min_ttl: float = Field(1.0, gt=0, description="Shortest seconds between resolutions.")
    dns_max_ttl: float = Field(30.0, gt=0, description="Longest seconds between resolutions.")
    dns_timeout: float = Field(2.0, gt=0, description="Seconds one resolution may take.")
    # Retries and timeouts.
    max_retries: int = Field(3, ge=0, le=10, description="Retries per request, each elsewhere.")
    retry_budget_percent: float = Field(20.0, ge=0, le=100, description="Max % of active retrying.")
    retry_budget_min: int = Field(3, ge=0, description="Concurrent retries always allowed.")
    retry_budget_wait: float = Field(1.0, ge=0, description="Max seconds to wait for a retry slot.")
    retry_after_cap: float = Field(30.0, ge=0, description="Cap on honouring Retry-After, seconds.")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds to connect to a backend.")
    per_try_timeout: float = Field(10.0, gt=0, description="Most seconds per try, to the answer head.")
    per_try_factor: float = Field(4.0, ge=0, description="A try gives up after this many times the "
                                  "recent p99 of answer heads (bounded by per_try_timeout_min and "
                                  "per_try_timeout); 0: always per_try_timeout.")
    per_try_timeout_min: float = Field(1.0, gt=0, description="Fewest seconds per try.")
    request_timeout: float = Field(30.0, gt=0, description="Deadline without X-Request-Timeout-Ms.")
    max_request_timeout: float = Field(300.0, gt=0, description="Cap on X-Request-Timeout-Ms.")
    # Limits.
    max_body_bytes: int = Field(10 * 2**20 + 2**16, ge=0, description="Replay buffer per request.")
    max_header_bytes: int = Field(32_768, ge=1024, description="Request line plus headers.")
    max_headers: int = Field(100, ge=8, description="Header count per message.")
    max_inflight: int = Field(1024, ge=1, description="Requests in flight in total.")
    max_websockets: int = Field(1024, ge=1, description="WebSockets open at once.")
    websocket_idle_timeout: float = Field(
        300.0, gt=0, description="Seconds a WebSocket may pass no byte either way."
    )
    max_client_connections: int = Field(4096, ge=1, description="Open client connections.")
    max_connections_per_backend: int = Field(256, ge=1, description="Pool size per backend.")
    upstream_idle_timeout: float = Field(4.0, gt=0, description="Idle pooled connection lifetime.")
    client_keepalive_timeout: float = Field(60.0, gt=0, description="Idle client connection.")
    client_request_timeout: float = Field(30.0, gt=0, description="Seconds to read one request.")
    shutdown_timeout: float = Field(30.0, ge=0, description="Seconds to drain on SIGTERM.")
    # TLS (``loadbalancer.tls``): certificate files are watched and reloaded when they change.
    tls_cert: Path | None = Field(None, description="Certificate chain (PEM) served on the proxy "
                                  "port and the gRPC port; with --tls-key they speak TLS only.")
    tls_key: Path | None = Field(None, description="Private key (PEM) of --tls-cert.")
    tls_client_ca: Path | None = Field(None, description="CA bundle (PEM): clients must present a "
                                       "certificate it signed (mutual TLS).")
    http2: bool = Field(True, description="Offer HTTP/2 (ALPN h2, before http/1.1) on the TLS proxy "
                        "port: HTTP requests and gRPC calls over one port. Off: HTTP/1.1 only, which "
                        "costs the balancer about a third of HTTP/2's CPU per request.")
    admin_tls_cert: Path | None = Field(None, description="Certificate chain (PEM) of the admin port.")
    admin_tls_key: Path | None = Field(None, description="Private key (PEM) of --admin-tls-cert.")
    upstream_ca: Path | None = Field(None, description="CA bundle (PEM) https:// backends (HTTP "
                                     "and gRPC) are verified against (default: the system's store).")
    upstream_cert: Path | None = Field(None, description="Client certificate (PEM) for https:// "
                                       "backends (HTTP and gRPC) that require one (mutual TLS).")
    upstream_key: Path | None = Field(None, description="Private key (PEM) of --upstream-cert.")
    tls_reload_interval: float = Field(1.0, gt=0, description="Seconds between checks of the "
                                       "certificate files for a change.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging.")
    access_log: bool = Field(False, description="One JSON line per proxied request.")

    @field_validator("backends", mode="before")
    @classmethod
    def _backends(cls, value: Any) -> list[BackendSpec]:
        return parse_backends(value)

    @field_validator("grpc_backends", mode="before")
    @classmethod
    def _grpc_backends(cls, value: Any) -> list[BackendSpec]:
        return parse_grpc_backends(value)

    @field_validator("discover_grpc", mode="before")
    @classmethod
    def _discover_grpc(cls, value: Any) -> list[DiscoverSpec]:
        return parse_discover(value)

    @field_validator("discover", mode="before")
    @classmethod
    def _discover(cls, value: Any) -> list[DiscoverSpec]:
        return parse_discover(value)

    @field_validator("dns_server")
    @classmethod
    def _dns_server(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        host, port = parse_host_port(value)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    @model_validator(mode="after")
    def _discovery(self) -> LBSettings:
        if self.dns_min_ttl > self.dns_max_ttl:
            raise ValueError("dns_min_ttl must not be above dns_max_ttl")
        followed = {(d.name, d.port): d.url for d in self.discover}
        for backend in self.backends:  # the name's addresses would be registered twice
            url = followed.get((backend.host.lower().rstrip("."), backend.port))
            if url is not None:
                raise ValueError(f"backend {backend.url} is also discovered by {url}: give one")
        return self

    @model_validator(mode="after")
    def _tls_pairs(self) -> LBSettings:
        for cert, key in (("tls_cert", "tls_key"), ("admin_tls_cert", "admin_tls_key"),
                          ("upstream_cert", "upstream_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (the proxy and gRPC ports' TLS)")
        return self

    @field_validator("hash_header")
    @classmethod
    def _hash_header(cls, value: str) -> str:
        name = value.strip().lower()
        if not name or not all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name):
            raise ValueError(f"hash_header must be a header name, got {value!r}")
        if name in _UNHASHABLE_HEADERS:
            raise ValueError(f"hash_header cannot be {name!r}: the balancer consumes or drops it")
        return name

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("health_path must start with /")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(init_settings, InitSettingsSource)
        assert isinstance(env_settings, EnvSettingsSource)
        return init_settings, env_settings, _ConfigFileSource(settings_cls, init_settings)


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Reads the file named by the ``config`` keyword or ``YOLOSERVE_LB_CONFIG``."""

    def __init__(self, settings_cls: type[BaseSettings], init: InitSettingsSource) -> None:
        super().__init__(settings_cls)
        self._init = init

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self._init.init_kwargs.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
        return load_config_file(Path(path)) if path else {}


def load_config_file(path: Path) -> dict[str, Any]:
    """The settings in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file, keys normalised."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: config file over {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    section = data.get("lb", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'lb' must be a mapping of settings")
    return {str(key).replace("-", "_"): value for key, value in section.items()}


def load_settings(**overrides: Any) -> LBSettings:
    """Builds the settings, mapping pydantic's validation errors to :class:`ConfigError`."""
    try:
        return LBSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = [f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()]
    return "invalid settings: " + "; ".join(lines[:10])
