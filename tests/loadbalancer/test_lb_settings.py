"""Settings: backend specs, the environment, config files (YAML and TOML), and precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadbalancer.errors import ConfigError
from loadbalancer.settings import BackendSpec, load_config_file, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("YOLOSERVE_LB_"):
            monkeypatch.delenv(key)


@pytest.mark.parametrize(
    ("text", "url", "weight"),
    [
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000", 1),
        ("http://127.0.0.1:9000=3", "http://127.0.0.1:9000", 3),
        ("http://localhost:9000/=2", "http://localhost:9000", 2),
        ("http://[::1]:9000=4", "http://[::1]:9000", 4),
    ],
)
def test_backend_spec_forms(text: str, url: str, weight: int) -> None:
    spec = BackendSpec.parse(text)
    assert (spec.url, spec.weight) == (url, weight)
    assert spec.id == url.removeprefix("http://")


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1:9000", "ftp://a:1", "https://a", "http://a", "http://a:1/v1", "http://a:1=x",
     "http://a:1=0"],
)
def test_bad_backend_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(backends=[text])


def test_https_backends_and_tls_settings() -> None:
    spec = BackendSpec.parse("https://Backend.example:8443=3")
    assert (spec.url, spec.id, spec.tls, spec.weight) == ("https://backend.example:8443",
                                                          "backend.example:8443", True, 3)
    assert not BackendSpec.parse("http://a:1").tls
    for given in ({"tls_cert": "c.pem"}, {"admin_tls_key": "k.pem"}, {"upstream_cert": "c.pem"},
                  {"tls_client_ca": "ca.pem"}):
        with pytest.raises(ConfigError):
            load_settings(**given)  # a certificate without its key, or a client CA without TLS
    s = load_settings(tls_cert="c.pem", tls_key="k.pem", tls_client_ca="ca.pem")
    assert s.tls_cert is not None and s.tls_cert.name == "c.pem" and s.tls_reload_interval == 1.0


def test_grpc_backends_h2c_or_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(grpc_backends=["10.0.0.5:8001", "https://grpc.example:8443=2"], grpc_port=0)
    assert [(b.url, b.tls, b.weight) for b in s.grpc_backends] == [
        ("http://10.0.0.5:8001", False, 1), ("https://grpc.example:8443", True, 2)]
    monkeypatch.setenv("YOLOSERVE_LB_GRPC_BACKENDS", "https://10.0.0.5:8001,10.0.0.6:8001")
    assert [b.tls for b in load_settings().grpc_backends] == [True, False]
    # a mapping (config file) may name what the certificate of an address carries
    named = load_settings(grpc_backends=[{"url": "https://10.0.0.7:8001", "server_name": "grpc.test"}])
    assert named.grpc_backends[0].verified_name == "grpc.test"


def test_environment_and_cli_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOSERVE_LB_PORT", "9999")
    monkeypatch.setenv("YOLOSERVE_LB_POLICY", "random")
    monkeypatch.setenv("YOLOSERVE_LB_BACKENDS", "http://a:1=2, http://b:2")
    monkeypatch.setenv("YOLOSERVE_LB_ADMIN_TOKEN", "s3cret")
    settings = load_settings(port=8888, policy=None)  # None: flag not given
    assert settings.port == 8888 and settings.policy == "random"
    assert [(b.url, b.weight) for b in settings.backends] == [("http://a:1", 2), ("http://b:2", 1)]
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == "s3cret"


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_is_below_env_and_flags(
    tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / f"lb{suffix}"
    if suffix == ".yaml":
        path.write_text(
            "port: 7000\nadmin-port: 7001\npolicy: peak_ewma\nbackends:\n"
            "  - http://a:1=3\n  - {url: 'http://b:2', weight: 2}\n"
        )
    else:
        path.write_text(
            'port = 7000\nadmin_port = 7001\npolicy = "peak_ewma"\n'
            'backends = ["http://a:1=3", {url = "http://b:2", weight = 2}]\n'
        )
    monkeypatch.setenv("YOLOSERVE_LB_ADMIN_PORT", "7101")
    settings = load_settings(config=path, policy="round_robin")
    assert (settings.port, settings.admin_port, settings.policy) == (7000, 7101, "round_robin")
    assert [(b.url, b.weight) for b in settings.backends] == [("http://a:1", 3), ("http://b:2", 2)]


def test_config_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "lb.yml"
    path.write_text("lb:\n  max_retries: 1\n")
    monkeypatch.setenv("YOLOSERVE_LB_CONFIG", str(path))
    assert load_settings().max_retries == 1


def test_bad_config_files(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(config=typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(broken)
    with pytest.raises(ConfigError):
        load_config_file(tmp_path / "missing.yaml")
