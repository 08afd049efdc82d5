"""STOW-RS out (node.dicomweb_send): what goes on the wire, and what ``last_error`` says.

A real HTTP(S) server on a free port answers each POST with a canned PS3.18 response, the
way archives answer that are not at hand here (a 202 with one instance failed, a 503
page, a redirect, a stalled server, a certificate from a private CA, a server that requires
a client certificate); what it received is parsed with python-multipart, a parser of its
own. Orthanc's answers are in tests/integration/test_dicomweb_destination.py.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from python_multipart import MultipartParser

from config.settings import ConfigError, Destination, Settings
from node.dicomweb_send import open_session, store_study
from node.preflight import check_destination_tls_files
from tests.certificates import Pki, make_pki
from tests.factories import write_dx
from tests.ports import free_port

DICOM_JSON = "application/dicom+json"


class CannedServer:
    """Answers each request with the next (status, headers, body); keeps what it got."""

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]],
                 tls: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                server.received.append((self.path, dict(self.headers), self.rfile.read(length)))
                status, headers, body = server.answers.pop(0)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CannedServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def destination(url: str, **keys: object) -> Destination:
    return Settings.model_validate({"destinations": [
        {"name": "ARCHIVE", "kind": "dicomweb", "url": url, **keys}]}).destinations[0]


def stow_response(stored: list[str] = (), failed: dict[str, int] | None = None,
                  warned: dict[str, int] | None = None) -> bytes:
    """A PS3.18 10.5.3 response body: Referenced and Failed SOP Sequences."""
    def item(uid: str, tag: str | None = None, code: int | None = None) -> dict:
        found = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
                 "00081155": {"vr": "UI", "Value": [uid]}}
        if tag:
            found[tag] = {"vr": "US", "Value": [code]}
        return found
    warned = warned or {}
    body = {"00081199": {"vr": "SQ", "Value": [item(u, "00081196", warned.get(u))
                                               if u in warned else item(u) for u in stored]}}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [item(u, "00081197", c)
                                                  for u, c in failed.items()]}
    return json.dumps(body).encode()


@pytest.fixture
def study(tmp_path) -> tuple[str, list[tuple[str, bytes]]]:
    """Two files of one study: (study UID, [(SOP Instance UID, file bytes)])."""
    files = [write_dx(tmp_path / f"{i}.dcm", seed=i, study_uid="1.2.826.0.1.3680043.10.77",
                      instance_number=i + 1) for i in range(2)]
    return "1.2.826.0.1.3680043.10.77", [
        (str(pydicom.dcmread(f).SOPInstanceUID), f.read_bytes()) for f in files]


def parts_of(headers: dict[str, str], body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Type, bytes) of each part, by python-multipart."""
    boundary = headers["Content-Type"].split("boundary=")[1].strip('"')
    parts: list[tuple[str, bytes]] = []
    state = {"data": [], "name": b"", "headers": {}}

    def on_part_begin() -> None:
        state["data"], state["headers"] = [], {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["name"] = data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["headers"][state["name"].lower()] = data[start:end].decode()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append((state["headers"].get(b"content-type", ""), b"".join(state["data"])))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin,
                                        "on_header_field": on_header_field,
                                        "on_header_value": on_header_value,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    parser.write(body)
    parser.finalize()
    return parts


def test_one_request_per_study_carries_each_file_byte_for_byte_with_the_token(study):
    study_uid, instances = study
    with CannedServer([(200, {"Content-Type": DICOM_JSON},
                        stow_response([uid for uid, _ in instances]))]) as server:
        target = destination(f"http://127.0.0.1:{server.port}/dicom-web/",
                             token="t0ken-for-the-archive")
        outcome = store_study(open_session(target), target, study_uid, instances)

    assert outcome == {uid: "" for uid, _ in instances}
    [(path, headers, body)] = server.received
    assert path == f"/dicom-web/studies/{study_uid}"  # the trailing slash is not doubled
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert headers["Accept"] == DICOM_JSON
    assert headers["Authorization"] == "Bearer t0ken-for-the-archive"
    assert parts_of(headers, body) == [("application/dicom", data) for _, data in instances]


def test_basic_auth_is_sent_as_rfc_7617_says(study):
    study_uid, instances = study
    with CannedServer([(200, {"Content-Type": DICOM_JSON}, b"")]) as server:
        target = destination(f"http://127.0.0.1:{server.port}", username="cxr",
                             password="pässword")
        store_study(open_session(target), target, study_uid, instances[:1])

    expected = base64.b64encode("cxr:pässword".encode("latin-1")).decode()
    assert server.received[0][1]["Authorization"] == f"Basic {expected}"


def test_202_partial_names_the_failure_reason_of_the_instance_that_failed(study):
    study_uid, [(stored, data1), (failed, data2)] = study
    answer = stow_response([stored], failed={failed: 0xA700})
    with CannedServer([(202, {"Content-Type": DICOM_JSON}, answer)]) as server:
        target = destination(f"http://127.0.0.1:{server.port}/dicom-web")
        outcome = store_study(open_session(target), target, study_uid,
                              [(stored, data1), (failed, data2)])

    assert outcome[stored] == ""
    assert outcome[failed] == (f"ARCHIVE (http://127.0.0.1:{server.port}/dicom-web): "
                               "HTTP 202 Accepted, FailureReason 0xA700 (refused: out of "
                               "resources)")


def test_stored_with_a_warning_reason_is_stored(study):
    study_uid, instances = study
    uids = [uid for uid, _ in instances]
    answer = stow_response(uids, warned={uids[0]: 0xB000})  # coercion of data elements
    with CannedServer([(202, {"Content-Type": DICOM_JSON}, answer)]) as server:
        target = destination(f"http://127.0.0.1:{server.port}")
        outcome = store_study(open_session(target), target, study_uid, instances)

    assert outcome == dict.fromkeys(uids, "")


def test_202_that_does_not_list_an_instance_does_not_count_it_stored(study):
    study_uid, [(listed, data1), (unlisted, data2)] = study
    with CannedServer([(202, {"Content-Type": DICOM_JSON}, stow_response([listed]))]) as server:
        target = destination(f"http://127.0.0.1:{server.port}")
        outcome = store_study(open_session(target), target, study_uid,
                              [(listed, data1), (unlisted, data2)])

    assert outcome[listed] == ""
    assert "not listed as stored" in outcome[unlisted]


@pytest.mark.parametrize(("status", "headers", "body", "expected"), [
    (409, {}, "failed", "HTTP 409 Conflict, FailureReason 0xA900 (data set does not match "
                        "SOP class)"),
    (401, {"WWW-Authenticate": "Bearer"}, b"", "HTTP 401 Unauthorized"),
    (503, {"Content-Type": "text/plain"}, b"archive is reindexing\nretry later",
     "HTTP 503 Service Unavailable: archive is reindexing"),
    (500, {"Content-Type": "text/html"}, b"<html><body>" + b"x" * 5000 + b"</body></html>",
     "HTTP 500 Internal Server Error"),
    (307, {"Location": "https://archive.example/dicom-web/studies"}, b"",
     "HTTP 307 Temporary Redirect, redirected to https://archive.example/dicom-web/studies; "
     "set url to the address the service answers on"),
], ids=["409-failed-sop-without-content-type", "401", "503-text", "500-html-not-quoted",
        "redirect-not-followed"])
def test_an_error_answer_is_one_line_with_the_status(study, status, headers, body, expected):
    study_uid, instances = study
    if body == "failed":  # as Orthanc answers a 409: the Failed SOP Sequence, no Content-Type
        body = stow_response(failed={uid: 0xA900 for uid, _ in instances})
    with CannedServer([(status, headers, body)]) as server:
        target = destination(f"http://127.0.0.1:{server.port}")
        outcome = store_study(open_session(target), target, study_uid, instances)

    where = f"ARCHIVE (http://127.0.0.1:{server.port})"
    assert outcome == {uid: f"{where}: {expected}" for uid, _ in instances}
    assert len(server.received) == 1  # no redirect followed, no retry behind the outbox


def test_nothing_listening_is_a_connection_failure_named_as_such(study):
    study_uid, instances = study
    target = destination(f"http://127.0.0.1:{free_port()}/dicom-web")

    outcome = store_study(open_session(target), target, study_uid, instances)

    assert set(outcome.values()) == {f"cannot connect to {target.where} (connection refused)"}


def test_a_server_that_never_answers_times_out_after_timeout_seconds(study):
    study_uid, instances = study
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        target = destination(f"http://127.0.0.1:{silent.getsockname()[1]}",
                             timeout_seconds=0.5)
        outcome = store_study(open_session(target), target, study_uid, instances[:1])

    assert list(outcome.values()) == [f"{target.where}: no STOW-RS response within 0.5 s"]


def test_a_server_that_hangs_up_without_answering_lost_the_connection(study):
    study_uid, instances = study
    with socket.create_server(("127.0.0.1", 0)) as rude:
        def hang_up() -> None:
            connection, _ = rude.accept()
            connection.recv(1024)
            connection.close()
        threading.Thread(target=hang_up, daemon=True).start()
        target = destination(f"http://127.0.0.1:{rude.getsockname()[1]}")
        outcome = store_study(open_session(target), target, study_uid, instances[:1])

    [error] = outcome.values()
    assert error.startswith(f"{target.where}: connection lost before the answer (")


@pytest.fixture
def private_ca(tmp_path, tool) -> tuple[Path, ssl.SSLContext]:
    """A CA of our own and an HTTPS server context for 127.0.0.1 signed by it."""
    def openssl(*args: str) -> None:
        subprocess.run([tool("openssl"), *args], cwd=tmp_path, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=test archive CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=archive")
    (tmp_path / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    return tmp_path / "ca.crt", context


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_checks_the_certificate_against_ca_file_or_refuses(study, private_ca):
    study_uid, instances = study
    ca_file, server_context = private_ca
    answers = [(200, {"Content-Type": DICOM_JSON}, stow_response([instances[0][0]]))] * 2
    with CannedServer(answers, tls=server_context) as server:
        url = f"https://127.0.0.1:{server.port}/dicom-web"
        system_cas = destination(url)
        refused = store_study(open_session(system_cas), system_cas, study_uid, instances[:1])
        ours = destination(url, ca_file=str(ca_file))
        trusted = store_study(open_session(ours), ours, study_uid, instances[:1])
        unchecked = destination(url, verify_tls=False)
        accepted = store_study(open_session(unchecked), unchecked, study_uid, instances[:1])

    [refusal] = refused.values()
    assert refusal.startswith(f"{system_cas.where}: TLS failed (")
    assert "certificate verify failed" in refusal
    assert refusal.endswith("check verify_tls and ca_file against the server's certificate")
    assert list(trusted.values()) == [""] and list(accepted.values()) == [""]
    assert len(server.received) == 2  # the refused one never got past the handshake


@pytest.fixture
def pki(tmp_path, tool) -> Pki:
    return make_pki(tool, tmp_path / "pki")


def requiring_client_certificates(pki: Pki) -> ssl.SSLContext:
    """An HTTPS server context that ends the handshake without a certificate from pki's CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.crt("server"), pki.key("server"))
    context.load_verify_locations(pki.crt("ca"))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_client_certificate_is_presented_and_a_refusal_of_it_says_what_to_check(study, pki):
    study_uid, instances = study
    answers = [(200, {"Content-Type": DICOM_JSON}, stow_response([instances[0][0]]))]
    with CannedServer(answers, tls=requiring_client_certificates(pki)) as server:
        url = f"https://127.0.0.1:{server.port}/dicom-web"

        def send(certificate: str | None) -> str:
            keys = {"client_certificate": str(pki.crt(certificate)),
                    "client_private_key": str(pki.key(certificate))} if certificate else {}
            target = destination(url, ca_file=str(pki.crt("ca")), **keys)
            [outcome] = store_study(open_session(target), target, study_uid,
                                    instances[:1]).values()
            return outcome

        ours, without, outsider = send("client"), send(None), send("outsider")

    assert ours == ""
    assert len(server.received) == 1  # the others never got past the handshake
    where = f"ARCHIVE ({url})"
    # TLS 1.3 ends our side of the handshake first: the refusal is an alert, or the close.
    assert without.startswith((f"{where}: TLS failed (", f"{where}: connection lost"))
    assert without.endswith("if it requires a client certificate, set client_certificate "
                            "and client_private_key")
    assert outsider.startswith((f"{where}: TLS failed (", f"{where}: connection lost"))
    assert outsider.endswith("check that it accepts client_certificate (signed by a CA it "
                             "trusts, not expired)")
    assert "_ssl.c" not in without + outsider


def test_a_client_key_that_is_not_the_certificates_is_refused_at_start(pki):
    settings = Settings.model_validate({"destinations": [{
        "name": "ARCHIVE", "kind": "dicomweb", "url": "https://archive.example/dicom-web",
        "client_certificate": str(pki.crt("client")),
        "client_private_key": str(pki.key("stranger"))}]})

    with pytest.raises(ConfigError) as refused:
        check_destination_tls_files(settings)

    assert str(refused.value).startswith(
        f"destinations.0.client_certificate: {pki.crt('client')} does not load with "
        "client_private_key (")
    assert str(refused.value).endswith("give PEM files whose key matches the certificate")
