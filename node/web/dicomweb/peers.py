"""DICOMweb peers: who may store to the node, known by a bearer token kept only hashed.

A peer is configured as ``dicomweb: {peers: [{name: ris, token_sha256: ...}]}``; the
token itself is given to the sender once (``cxr-node dicomweb token NAME``) and never
stored. Why SHA-256 and not argon2: see :class:`config.settings.DicomwebPeer`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

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


class Peers:
    """Finds the peer an ``Authorization: Bearer <token>`` header belongs to."""

    def __init__(self, peers: list[DicomwebPeer]) -> None:
        self._peers = list(peers)

    def __bool__(self) -> bool:
        return bool(self._peers)

    def identify(self, authorization: str | None) -> tuple[DicomwebPeer | None, str]:
        """The peer, or None and why not (for the audit row: never the token itself).

        Every configured digest is compared, in constant time, so the answer's timing
        does not tell which peer's token a guess came close to.
        """
        if not authorization:
            return None, "no Authorization header (a bearer token is required)"
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None, f"Authorization is not a bearer token (scheme {scheme[:20]!r})"
        digest = token_sha256(token)
        found = None
        for peer in self._peers:
            if hmac.compare_digest(peer.token_sha256, digest):
                found = peer
        if found is None:
            return None, "unknown bearer token"
        return found, ""
