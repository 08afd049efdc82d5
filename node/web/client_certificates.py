"""Client certificates of the web service's TLS, for DICOMweb peers known by certificate.

uvicorn (0.54) asks for a client certificate when its TLS context says so, but puts none
into the ASGI scope. :class:`ClientCertificateProtocol` does: on each connection it keeps
the certificate the handshake verified, and every request's scope gets the ASGI TLS
extension (``scope["extensions"]["tls"]``, "TLS" in the ASGI specification's Extensions).
:func:`client_certificate` reads it back for the endpoint.

This is one of the two adapters over uvicorn's internals here (``HttpToolsProtocol`` with
its ``connection_made``, ``on_message_begin`` and ``scope``; the other, which it builds on,
is node/web/http_protocol.py), pinned by tests/node/test_client_certificates.py. It fails
closed: served without it (another server, uvicorn's h11 protocol) no scope has the
extension, so no request is admitted by a certificate, and a bearer token is still needed.
"""

from __future__ import annotations

import asyncio
import ssl

from cryptography import x509

from node.web.http_protocol import HttpProtocol

# The extension's tls_version is the TLS record's version number (RFC 8446 B.1).
_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject) -> dict:
    """The ASGI TLS extension of one connection.

    ``client_cert_chain`` holds only the client's own certificate: Python 3.11's ``ssl``
    gives no verified chain (``get_verified_chain`` is 3.13). A certificate is taken only
    where the context verified it (CERT_OPTIONAL or CERT_REQUIRED): one that fails
    verification ends the handshake, so ``client_cert_error`` is always None.
    """
    verified = ssl_object.context.verify_mode != ssl.CERT_NONE
    der = ssl_object.getpeercert(binary_form=True) if verified else None
    return {
        "server_cert": None,  # not needed by the node; the spec allows None
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": (x509.load_der_x509_certificate(der).subject.rfc4514_string()
                             if der else None),
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version()),
        "cipher_suite": None,  # ssl names the suite but gives no IANA number
    }


class ClientCertificateProtocol(HttpProtocol):
    """uvicorn's httptools protocol, with the TLS extension in each request's scope."""

    _tls: dict | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls = tls_extension(ssl_object) if ssl_object is not None else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            extensions = self.scope.setdefault("extensions", {})  # type: ignore[typeddict-item]
            extensions["tls"] = dict(self._tls)


def client_certificate(scope: dict) -> bytes | None:
    """The DER of the request's verified client certificate, or None."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain or tls.get("client_cert_error") is not None:
        return None
    return ssl.PEM_cert_to_DER_cert(chain[0])
