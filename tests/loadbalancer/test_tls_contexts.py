"""The balancer's TLS contexts in process, each handshake run through memory BIOs (no socket, no
event loop):

- a Kubernetes Secret volume's update (``tls.crt -> ..data/tls.crt``, then ``..data`` swapped to
  a new folder in one rename) is a change: new handshakes on the listening context get the new
  certificate; a key written without its certificate yet keeps the previous pair until the
  certificate lands;
- a handshake the listening context refuses first has OpenSSL's alert sent (the failure waits
  one step), then fails with OpenSSL's error; one with nothing to send (plain HTTP) fails at
  once; both are counted by reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from loadbalancer.tls import Reloading, listening_context, server_context
from tests.loadbalancer.pki import Authority, Issued
from tests.loadbalancer.test_lb_tls import trusting


class Pair:
    """A client and a server side of one TLS connection, joined by memory BIOs."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.to_server, self.from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.to_client, self.from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.server = server.wrap_bio(self.to_server, self.from_server, server_side=True)
        self.client = client.wrap_bio(self.to_client, self.from_client, server_hostname="localhost")

    def client_step(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.client.do_handshake()
        self.to_server.write(self.from_client.read())

    def server_step(self) -> bytes:
        """One handshake step of the server; what it sends."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self.server.do_handshake()
        sent = self.from_server.read()
        self.to_client.write(sent)
        return sent

    def shake(self) -> None:
        for _ in range(4):
            self.client_step()
            self.server_step()

    def served_serial(self) -> int:
        self.shake()
        der = self.client.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number


def secret_volume(mount: Path, issued: Issued, version: int) -> None:
    """What the kubelet does on a Secret's update: the files into a new folder, then ``..data``
    pointed at it in one rename; ``tls.crt`` and ``tls.key`` are links through ``..data``."""
    folder = mount / f"..2026_12_06_{version}"
    folder.mkdir()
    shutil.copy(issued.cert, folder / "tls.crt")
    shutil.copy(issued.key, folder / "tls.key")
    (mount / "..data_tmp").symlink_to(folder.name)
    os.replace(mount / "..data_tmp", mount / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (mount / name).is_symlink():
            (mount / name).symlink_to(f"..data/{name}")


def test_a_secret_volume_update_is_served_to_new_handshakes(
    pki: tuple[Authority, Authority], tmp_path: Path
) -> None:
    ca, _ = pki
    mount = tmp_path / "secret"
    mount.mkdir()
    first, renewed = ca.issue("first"), ca.issue("renewed")
    secret_volume(mount, first, 1)
    cert, key = mount / "tls.crt", mount / "tls.key"
    reloading = Reloading("proxy", [cert, key], lambda: server_context(cert, key))
    front = listening_context(reloading)
    assert not reloading.check()
    assert Pair(front, trusting(ca)).served_serial() == first.serial

    secret_volume(mount, renewed, 2)
    assert reloading.check() and reloading.reloads == 1
    assert Pair(front, trusting(ca)).served_serial() == renewed.serial


def test_a_key_without_its_certificate_keeps_the_previous_pair(
    pki: tuple[Authority, Authority], tmp_path: Path
) -> None:
    ca, _ = pki
    first = ca.issue("lb")
    reloading = Reloading("proxy", [first.cert, first.key],
                          lambda: server_context(first.cert, first.key))
    front = listening_context(reloading)
    later = ca.issue("later", into=tmp_path)
    shutil.copy(later.key, first.key)  # the key lands first
    assert not reloading.check() and reloading.reloads == 0
    assert not reloading.check()  # the same broken files: tried once, not again
    assert Pair(front, trusting(ca)).served_serial() == first.serial
    shutil.copy(later.cert, first.cert)  # then its certificate
    assert reloading.check()
    assert Pair(front, trusting(ca)).served_serial() == later.serial


@pytest.mark.parametrize(("version", "alert"), [
    (ssl.TLSVersion.TLSv1_2, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    (ssl.TLSVersion.TLSv1_3, "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
])
def test_a_refused_client_gets_the_alert_before_the_failure(
    pki: tuple[Authority, Authority], version: ssl.TLSVersion, alert: str
) -> None:
    ca, _ = pki
    server = ca.issue("lb")
    reloading = Reloading("proxy", [server.cert, server.key],
                          lambda: server_context(server.cert, server.key, ca.cert))
    front = listening_context(reloading)
    client = trusting(ca)  # no client certificate
    client.maximum_version = version
    pair = Pair(front, client)
    for _ in range(4):  # up to the step that refuses: it raises nothing, it sends the alert
        pair.client_step()
        sent = pair.server_step()
        if reloading.refusals.counts:
            break
    assert reloading.refusals.counts == {"peer_did_not_return_a_certificate": 1}
    assert sent, "the refusing step sent nothing"
    with pytest.raises(ssl.SSLError) as failed:  # the client reads the alert
        pair.client.do_handshake()
        pair.client.read(1)
    assert failed.value.reason == alert
    with pytest.raises(ssl.SSLError) as closed:  # the server's next step fails for good
        pair.server.do_handshake()
    assert closed.value.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert reloading.refusals.counts == {"peer_did_not_return_a_certificate": 1}


def test_plain_http_fails_at_once_and_is_counted(pki: tuple[Authority, Authority]) -> None:
    ca, _ = pki
    server = ca.issue("lb")
    reloading = Reloading("proxy", [server.cert, server.key],
                          lambda: server_context(server.cert, server.key))
    pair = Pair(listening_context(reloading), trusting(ca))
    pair.to_server.write(b"GET / HTTP/1.1\r\nhost: lb\r\n\r\n")
    with pytest.raises(ssl.SSLError) as failed:
        pair.server.do_handshake()
    assert failed.value.reason == "HTTP_REQUEST"
    assert pair.from_server.pending == 0
    assert reloading.refusals.counts == {"http_request": 1}
