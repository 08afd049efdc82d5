"""DICOM TLS with dcmtk's TLS options: client certificates required, TLS 1.2 or later."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from storage.models import Instance, ResultObject, Transfer, TransferState
from tests.factories import study_files, write_chest
from tests.integration.conftest import node_database, wait_until
from tests.peers import echoscu, storescu


def _openssl(tool, *args: str, cwd: Path) -> None:
    subprocess.run([tool("openssl"), *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path, tool) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all PEM."""
    d = tmp_path / "pki"
    d.mkdir()
    _openssl(tool, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.crt", "-days", "2", "-subj", "/CN=cxr-node test CA", cwd=d)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"),
                            ("client", "extendedKeyUsage=clientAuth")):
        _openssl(tool, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl(tool, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)
    return d


@pytest.fixture
def tls_node(start_node, pki):
    return start_node(dicom={"tls": {"enabled": True, "certificate": str(pki / "server.crt"),
                                     "private_key": str(pki / "server.key"),
                                     "ca_certificates": str(pki / "ca.crt")}})


def test_tls_echo_and_store_with_a_client_certificate(tls_node, pki, tmp_path):
    client = ["+tls", str(pki / "client.key"), str(pki / "client.crt"),
              "+cf", str(pki / "ca.crt")]

    echo = echoscu(tls_node.port, extra=client)
    files = study_files(tmp_path / "s", 2)
    store = storescu(tls_node.port, files, extra=client)

    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert store.returncode == 0, store.stdout + store.stderr
    db = node_database(tls_node)
    with db.session() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    db.dispose()
    assert stored == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}


def test_tls_without_a_client_certificate_is_refused(tls_node, pki):
    anonymous = echoscu(tls_node.port, extra=["+tla", "+cf", str(pki / "ca.crt")])
    assert anonymous.returncode != 0


def test_plain_tcp_is_refused_when_tls_is_on(tls_node):
    assert echoscu(tls_node.port).returncode != 0


def test_tls_1_1_is_refused(tls_node, pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", tls_node.port)) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                pass
    # The server's alert, not a client-side configuration error.
    assert "PROTOCOL_VERSION" in str(refused.value).upper()


def test_results_are_sent_over_tls_to_a_destination_that_requires_it(start_node, pki,
                                                                     tmp_path):
    destination = start_node(peers=[{"ae_title": "CXRA", "hosts": ["127.0.0.1"]}],
                             dicom={"tls": {"enabled": True,
                                            "certificate": str(pki / "server.crt"),
                                            "private_key": str(pki / "server.key"),
                                            "ca_certificates": str(pki / "ca.crt")}})
    client_tls = {"enabled": True, "certificate": str(pki / "client.crt"),
                  "private_key": str(pki / "client.key"), "ca_certificates": str(pki / "ca.crt")}
    analysing = start_node(dicom={"ae_title": "CXRA"},
                           worker={"run_in_serve": True},
                           destinations=[{"name": "SECURE", "ae_title": "CXRNODE",
                                          "host": "127.0.0.1", "port": destination.port,
                                          "tls": client_tls}])
    assert storescu(analysing.port, [write_chest(tmp_path / "in", 13, 1)],
                    aec="CXRA").returncode == 0

    def sent() -> bool:
        db = node_database(analysing)
        with db.session() as session:
            states = set(session.scalars(select(Transfer.state)))
        db.dispose()
        return states == {TransferState.SENT}

    wait_until(sent, timeout=60)
    db = node_database(analysing)
    with db.session() as session:
        results = set(session.scalars(select(ResultObject.sop_instance_uid)))
    db.dispose()
    db = node_database(destination)
    with db.session() as session:
        received = set(session.scalars(select(Instance.sop_instance_uid)))
    db.dispose()
    assert len(results) == 3 and results <= received
