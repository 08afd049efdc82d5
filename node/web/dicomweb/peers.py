"""DICOMweb peers: who may store to the node, known by a bearer token or a client
certificate, each kept only as a SHA-256 digest.

A peer is configured as ``dicomweb: {peers: [{name: ris, token_sha256: ...}]}``; the
token itself is given to the sender once (``cxr-node dicomweb token NAME``) and never
stored. A peer with a client certificate has ``certificate_sha256`` (``cxr-node dicomweb
certificate NAME CERT.pem``): the digest of the certificate's DER, which the web service
sees once the TLS handshake has verified it (node/web/client_certificates.py). Why SHA-256
and not argon2: see :class:`config.settings.DicomwebPeer`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config.settings import DicomwebPeer, check_dicomweb_peer_name

# 32 random bytes: 256 bits, as URL-safe base64 (43 characters, no padding).
TOKEN_BYTES = 32


def token_sha256(token: str) -> str:
    """The digest the configuration keeps for ``token``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token(name: str) -> tuple[str, str]:
    """A new token for the peer ``name`` and the configuration line that admits it.

    Raises ``ValueError`` (naming the name) for a name the configuration would refuse.
    """
    check_dicomweb_peer_name(name)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, f"{{name: {name}, token_sha256: {token_sha256(token)}}}"


def certificate_sha256(der: bytes) -> str:
    """The digest the configuration keeps for a certificate (of its DER bytes)."""
    return hashlib.sha256(der).hexdigest()


def certificate_entry(name: str, pem: bytes) -> tuple[str, str]:
    """The ``dicomweb.peers`` entry that admits the holder of the certificate ``pem``,
    and a comment line with its subject and expiry (to tell entries apart later).

    Raises ``ValueError`` for a name the configuration would refuse or data that is not
    a PEM certificate.
    """
    check_dicomweb_peer_name(name)
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError("is not a PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    digest = certificate_sha256(certificate.public_bytes(serialization.Encoding.DER))
    comment = (f"# {certificate.subject.rfc4514_string()}, expires "
               f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return f"{{name: {name}, certificate_sha256: {digest}}}", comment


class Peers:
    """Finds the peer a request speaks for: by its verified client certificate, or by an
    ``Authorization: Bearer <token>`` header."""

    def __init__(self, peers: list[DicomwebPeer]) -> None:
        self._peers = list(peers)
        self._by_certificate = any(p.certificate_sha256 for p in self._peers)

    def __bool__(self) -> bool:
        return bool(self._peers)

    def identify(self, authorization: str | None,
                 certificate: bytes | None = None) -> tuple[DicomwebPeer | None, str]:
        """The peer, or None and why not (for the audit row: never the token itself).

        ``certificate`` is the DER of the client certificate the TLS handshake verified,
        or None. A certificate that is a peer's admits that peer; otherwise the token
        decides, as for a request without a certificate.
        """
        digest = None
        if certificate is not None:
            digest = certificate_sha256(certificate)
            found = self._match("certificate_sha256", digest)
            if found is not None:
                return found, ""
        found, why = self._by_token(authorization)
        if found is None and digest is not None:
            why = why if authorization else "no Authorization header"
            return None, f"the client certificate (SHA-256 {digest}) is not a peer's; {why}"
        return found, why

    def _by_token(self, authorization: str | None) -> tuple[DicomwebPeer | None, str]:
        if not authorization:
            if self._by_certificate:
                return None, ("no client certificate or Authorization header (a peer's "
                              "certificate or bearer token is required)")
            return None, "no Authorization header (a bearer token is required)"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, f"Authorization is not a bearer token (scheme {scheme[:20]!r})"
        found = self._match("token_sha256", token_sha256(token))
        if found is None:
            return None, "unknown bearer token"
        return found, ""

    def _match(self, key: str, digest: str) -> DicomwebPeer | None:
        """Every configured digest is compared, in constant time, so the answer's timing
        does not tell which peer's digest a guess came close to."""
        found = None
        for peer in self._peers:
            known = getattr(peer, key)
            if known is not None and hmac.compare_digest(known, digest):
                found = peer
        return found
