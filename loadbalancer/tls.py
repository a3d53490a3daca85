"""TLS: the contexts of the proxy and admin ports (HTTPS, optionally mutual), of the gRPC port
(gRPC over TLS), and of the connections to ``https://`` backends, HTTP and gRPC, each rebuilt when
its files change.

Server side: TLS 1.2 and 1.3 only; for TLS 1.2 only ECDHE key exchange with AEAD ciphers (the TLS
1.3 suites are all AEAD and OpenSSL's defaults stay); ALPN ``h2`` and ``http/1.1`` on the proxy
port (HTTP/2 for HTTP requests and gRPC calls alike: :mod:`loadbalancer.h2_downstream`),
``http/1.1`` on the admin port, ``h2`` on the gRPC port; session resumption by OpenSSL's
tickets, whose keys belong to the listening context and so survive a certificate reload.

Client side (backends): the same versions; ALPN ``http/1.1`` to HTTP backends, ``h2`` to gRPC
ones; the certificate must chain to ``--upstream-ca`` and carry the name the connection is made
for: the backend's host or IP address, or the DNS name it was discovered by (SNI and the check).

Reload: a :class:`Reloading` context is built from its files and built again, into a new
``SSLContext``, when one of them changes (inode, size or mtime: a Kubernetes Secret's symlink
swap or cert-manager's renewal). The listening socket keeps the first context for its whole life;
its ``sni_callback``, which OpenSSL runs on every ClientHello (with or without a server name),
hands the connection the newest context. Connections already open keep the certificate they were
given; a new file that does not load (a key written before its certificate, say) is logged and
the previous context stays until the files are whole again.

Refused clients: the event loop's TLS layer (uvloop's, as asyncio's) closes a connection whose
handshake failed without sending the alert OpenSSL wrote for it, so the client learns nothing
(``unexpected eof``) and the server logs nothing. The listening context's ``sslobject_class``
(:class:`_Refusing`) holds such a failure back once: the loop then sends what OpenSSL wrote (the
alert: ``certificate required``, ``protocol version``, ``handshake failure``) as it does for any
handshake step, and the failure itself is raised at the next step (the client's close, more
bytes, or the handshake timeout), which closes the connection; a failure with nothing to send
(plain HTTP on the port) closes it at once. Each refusal is counted by OpenSSL's reason in the
context's :class:`Refusals` (``/metrics``), the first of each reason logged.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from loadbalancer.errors import ConfigError

__all__ = [
    "ALPN",
    "CIPHERS",
    "H2_ALPN",
    "PROXY_ALPN",
    "Refusals",
    "Reloading",
    "client_context",
    "failure_reason",
    "listening_context",
    "server_context",
]

log = logging.getLogger("loadbalancer.tls")
# TLS 1.2: forward secrecy and AEAD only (Mozilla's "intermediate" profile without DHE).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# What the admin port and HTTP backends speak, and what the gRPC port and gRPC backends do.
ALPN = ("http/1.1",)
H2_ALPN = ("h2",)
# The proxy port's, h2 first: a client that speaks both gets HTTP/2, as from Envoy or nginx.
PROXY_ALPN = ("h2", "http/1.1")
Stamp = tuple[tuple[int, int, int] | None, ...]


def server_context(cert: Path, key: Path, client_ca: Path | None = None, *,
                   alpn: Sequence[str] = ALPN) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key``, offering ``alpn``; with ``client_ca``, clients
    must present a certificate it signed. Raises :class:`ConfigError` when a file does not load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS)
    context.set_alpn_protocols(list(alpn))
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from exc
    return context


def client_context(
    ca: Path | None = None, cert: Path | None = None, key: Path | None = None, *,
    alpn: Sequence[str] = ALPN,
) -> ssl.SSLContext:
    """A client context for ``https://`` backends, offering ``alpn``: their certificate must
    chain to ``ca`` (the system's store without one) and carry the ``server_hostname`` each
    connection gives (the host or IP address, or the discovered DNS name); ``cert`` and ``key``
    are presented to backends that ask for a client certificate."""
    try:
        context = ssl.create_default_context(cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(list(alpn))
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the backends' TLS files ({ca}, {cert}, {key}): {exc}") from exc
    return context


class Refusals:
    """The client handshakes a listening context refused, by OpenSSL's reason in lower case
    (``peer_did_not_return_a_certificate``, ``unsupported_protocol``, ``no_shared_cipher``,
    ``certificate_verify_failed``, ``http_request``...): a small fixed set. The first refusal of
    each reason is logged, the others only counted."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: dict[str, int] = {}

    def add(self, exc: ssl.SSLError) -> None:
        reason = str(exc.reason or "unknown").lower()
        seen = self.counts.get(reason, 0)
        self.counts[reason] = seen + 1
        if not seen:
            log.warning("a client's TLS handshake was refused; later ones for this reason are "
                        "only counted", extra={"tls": self.name, "reason": reason,
                                               "detail": failure_reason(exc)})


class _Refusing(ssl.SSLObject):
    """A server-side connection whose failed handshake lets the loop send OpenSSL's alert
    before it closes (see the module's docstring); ``refusals`` counts the failures. Only the
    handshake is overridden: reads and writes are the base class's."""

    refusals: ClassVar[Refusals]
    _refused: ssl.SSLError | None = None
    _outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any,
                **kwargs: Any) -> Any:
        # what ``SSLContext.wrap_bio`` calls to make an ``sslobject_class`` (CPython 3.7+); kept:
        # the BIO the loop sends from, to see whether OpenSSL wrote an alert
        made = super()._create(incoming, outgoing, *args, **kwargs)  # type: ignore[misc]
        made._outgoing = outgoing
        return made

    def do_handshake(self) -> None:
        if self._refused is not None:
            raise self._refused  # the alert went out at the step before: now close
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self.refusals.add(exc)
            if self._outgoing is not None and not self._outgoing.pending:
                raise  # no alert to send (plain HTTP, say): close at once
            self._refused = exc
            # "wait for the peer": the loop sends what OpenSSL wrote, the alert, as for any step
            raise ssl.SSLWantReadError(*exc.args) from exc


class Reloading:
    """``current``: the context last built from ``files`` by ``build``; :meth:`check` builds it
    again when a file has changed. The first build raises :class:`ConfigError`; later failures
    are logged (once per change of the files) and keep the previous context. ``refusals``: the
    client handshakes refused while listening with it (:func:`listening_context`)."""

    def __init__(self, name: str, files: Sequence[Path], build: Callable[[], ssl.SSLContext]) -> None:
        self.name = name
        self.files = tuple(files)
        self.build = build
        self.reloads = 0
        self.refusals = Refusals(name)
        self._stamp = self._stat()
        self.current = build()
        self._failed: Stamp | None = None

    def check(self) -> bool:
        """Rebuilds the context if a file changed since the last build; True when it did."""
        stamp = self._stat()
        if stamp == self._stamp or stamp == self._failed:
            return False
        try:
            context = self.build()
        except ConfigError as exc:
            self._failed = stamp
            log.warning("TLS files changed but do not load; keeping the previous ones",
                        extra={"tls": self.name, "error": str(exc)})
            return False
        self.current, self._stamp, self._failed = context, stamp, None
        self.reloads += 1
        log.info("TLS files reloaded", extra={"tls": self.name, "files": [str(f) for f in self.files]})
        return True

    def _stat(self) -> Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.files:
            try:
                st = os.stat(path)  # follows symlinks: a Secret volume swaps its ..data link
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)


def listening_context(reloading: Reloading) -> ssl.SSLContext:
    """The context to listen with: ``reloading``'s first one, which gives every new connection
    ``reloading.current`` as the handshake begins, and whose connections send their alert when
    their handshake fails, counted in ``reloading.refusals``."""
    front = reloading.current
    counted = reloading.refusals

    class Refusing(_Refusing):
        refusals = counted

    front.sslobject_class = Refusing

    def on_client_hello(ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = reloading.current
        if current is not context:
            ssl_object.context = current

    front.sni_callback = on_client_hello
    return front


def failure_reason(exc: BaseException) -> str:
    """Why a handshake failed, in a few words (``certificate verify failed: ...``), for the log
    line that is written once per reason."""
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return str(reason)
