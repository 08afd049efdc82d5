"""The web service's client certificates: pinned uvicorn internals, and real handshakes.

node/web/client_certificates.py adapts uvicorn's httptools protocol so that the ASGI scope
carries the TLS extension. The first tests pin each internal it touches, so an upgrade
fails here rather than leaving certificate peers silently unrecognised; the others serve
a small app through :class:`node.web.server.WebServer` and connect with real certificates.
"""

from __future__ import annotations

import inspect
import ssl

import pytest
import requests
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from config.settings import ConfigError, WebSettings
from node.web.client_certificates import ClientCertificateProtocol, client_certificate
from node.web.server import WebServer
from tests.certificates import Pki, make_pki
from tests.ports import free_port


def params(function) -> list[str]:  # noqa: ANN001
    return list(inspect.signature(function).parameters)


def test_uvicorn_is_the_major_version_the_adapter_was_written_for():
    assert uvicorn.__version__.startswith("0."), uvicorn.__version__


def test_httptools_protocol_sets_up_a_connection_and_a_scope_where_the_adapter_hooks_in():
    assert params(HttpToolsProtocol.connection_made) == ["self", "transport"]
    assert "self.transport = transport" in inspect.getsource(HttpToolsProtocol.connection_made)
    assert params(HttpToolsProtocol.on_message_begin) == ["self"]
    assert "self.scope = {" in inspect.getsource(HttpToolsProtocol.on_message_begin)
    # The scope is built there and handed to the app after the headers, never rebuilt.
    assert "scope=self.scope" in inspect.getsource(HttpToolsProtocol.on_headers_complete)


def test_uvicorn_config_takes_a_protocol_class_and_client_certificate_settings():
    config = params(uvicorn.Config.__init__)
    assert {"http", "ssl_cert_reqs", "ssl_ca_certs"} <= set(config)
    assert "self.http_protocol_class = self.http" in inspect.getsource(uvicorn.Config.load)


@pytest.fixture
def pki(tmp_path, tool) -> Pki:
    return make_pki(tool, tmp_path / "pki")


async def _scope_tls(request: Request) -> JSONResponse:
    """What the app sees: the TLS extension, and the certificate the endpoint would use."""
    der = client_certificate(request.scope)
    return JSONResponse({"tls": request.scope.get("extensions", {}).get("tls"),
                         "der_bytes": len(der) if der else 0})


@pytest.fixture
def serve(pki):
    servers: list[WebServer] = []

    def start(client_cas: bool) -> str:
        web = WebSettings(port=free_port(), worker_port=None, tls={
            "enabled": True, "certificate": pki.crt("server"), "private_key": pki.key("server"),
            "client_ca_certificates": pki.crt("ca") if client_cas else None})
        server = WebServer(Starlette(routes=[Route("/", _scope_tls)]), web, web.port, "web.port")
        server.start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def get(url: str, pki: Pki, certificate: str | None = None) -> dict:
    cert = (str(pki.crt(certificate)), str(pki.key(certificate))) if certificate else None
    answer = requests.get(url, verify=str(pki.crt("ca")), cert=cert, timeout=10)
    answer.raise_for_status()
    return answer.json()


def test_a_verified_client_certificate_reaches_the_scope_as_the_asgi_tls_extension(serve, pki):
    url = serve(client_cas=True)

    seen = get(url, pki, "client")

    tls = seen["tls"]
    assert tls["client_cert_chain"] == [pki.crt("client").read_text()]
    assert tls["client_cert_name"] == "CN=client,O=cxr-node tests"  # RFC 4514 order
    assert tls["client_cert_error"] is None
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert seen["der_bytes"] == len(ssl.PEM_cert_to_DER_cert(pki.crt("client").read_text()))


def test_without_a_certificate_the_connection_still_serves_and_carries_none(serve, pki):
    seen = get(serve(client_cas=True), pki)

    assert seen["tls"]["client_cert_chain"] == [] and seen["der_bytes"] == 0


def test_a_certificate_from_another_ca_ends_the_handshake(serve, pki):
    url = serve(client_cas=True)

    # TLS 1.2: an alert in the handshake; TLS 1.3, where the client's side of it is over
    # first: the server closes before answering. No request reaches the app either way.
    with pytest.raises(requests.exceptions.ConnectionError):
        get(url, pki, "outsider")
    assert get(url, pki)["der_bytes"] == 0  # the server goes on serving


def test_without_client_ca_certificates_no_certificate_is_asked_for(serve, pki):
    seen = get(serve(client_cas=False), pki, "client")

    assert seen == {"tls": None, "der_bytes": 0}  # plain uvicorn: the adapter is not in place


def test_the_adapter_is_uvicorns_httptools_protocol():
    assert issubclass(ClientCertificateProtocol, HttpToolsProtocol)
    assert client_certificate({"type": "http"}) is None
    assert client_certificate({"extensions": {"tls": {"client_cert_chain": []}}}) is None


def test_client_ca_certificates_that_are_not_pem_are_one_line_naming_the_key(pki, tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a PEM bundle")
    web = WebSettings(port=free_port(), worker_port=None, tls={
        "enabled": True, "certificate": pki.crt("server"), "private_key": pki.key("server"),
        "client_ca_certificates": not_pem})

    with pytest.raises(ConfigError) as refused:
        WebServer(Starlette(), web, web.port, "web.port").start()

    assert str(refused.value).startswith("web.tls: the certificate, private key or "
                                         "client_ca_certificates does not load (")
    assert "\n" not in str(refused.value)
