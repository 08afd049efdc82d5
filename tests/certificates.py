"""Certificates made by `openssl` for the mutual TLS tests: real files, as a site has them."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """PEM files in ``folder``: ``ca``, a ``server`` certificate for 127.0.0.1, a ``client``
    certificate from that CA, one from the same CA that no peer is configured with
    (``stranger``), and one from ``other_ca`` (``outsider``). Each ``name`` has
    ``name.crt`` and ``name.key``."""

    folder: Path

    def crt(self, name: str) -> Path:
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"

    def sha256(self, name: str) -> str:
        """SHA-256 of the certificate's DER, as ``certificate_sha256`` holds it."""
        der = ssl.PEM_cert_to_DER_cert(self.crt(name).read_text())
        return hashlib.sha256(der).hexdigest()


def make_pki(tool: Callable[[str], str], folder: Path) -> Pki:
    """Two CAs and the certificates of :class:`Pki`, valid for two days."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run([tool("openssl"), *args], cwd=folder, check=True, capture_output=True)

    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")  # quick
    for ca in ("ca", "other_ca"):
        openssl("req", "-x509", *new_key, "-keyout", f"{ca}.key",
                "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=cxr-node test {ca}")
    for name, ca, extension in (("server", "ca", "subjectAltName=IP:127.0.0.1"),
                                ("client", "ca", "extendedKeyUsage=clientAuth"),
                                ("stranger", "ca", "extendedKeyUsage=clientAuth"),
                                ("outsider", "other_ca", "extendedKeyUsage=clientAuth")):
        openssl("req", *new_key, "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/O=cxr-node tests/CN={name}")
        (folder / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey",
                f"{ca}.key", "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                "-extfile", f"{name}.ext")
    return Pki(folder)
