"""node.viewer's server: OHIF's files, its configuration, and nothing outside the dist."""

from __future__ import annotations

import http.client

import pytest

from node.viewer import ViewerServer
from tests.ports import free_port


@pytest.fixture
def viewer(tmp_path, monkeypatch):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("not for the browser")
    monkeypatch.setattr("node.viewer.shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr("node.viewer.DICOMWEB_PLUGIN", dist / "index.html")
    server = ViewerServer(dist, orthanc_http_port=free_port()).start()  # no Orthanc there
    yield server
    server.stop()


def get(viewer: ViewerServer, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", viewer.port, timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Content-Type"), answer.read()
    finally:
        connection.close()


def test_serves_ohif_files_with_their_types_and_its_routes_as_the_page(viewer):
    assert get(viewer, "/app.bundle.js")[1:] == ("text/javascript", b"console.log(1)")
    assert get(viewer, "/codec.wasm")[1] == "application/wasm"  # compiled only with this type
    assert get(viewer, "/viewer?StudyInstanceUIDs=1.2.3")[2] == b"<html>OHIF</html>"


def test_configuration_points_ohif_at_the_same_origin_dicomweb(viewer):
    status, kind, body = get(viewer, "/app-config.js")
    assert (status, kind) == (200, "text/javascript")
    assert b'"qidoRoot": "/dicom-web"' in body and b'"wadoRoot": "/dicom-web"' in body


def test_never_serves_a_file_outside_the_dist(viewer):
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt"):
        assert b"not for the browser" not in get(viewer, path)[2]


def test_an_unreachable_pacs_is_a_502_naming_it(viewer):
    status, _, body = get(viewer, "/dicom-web/studies")
    assert status == 502 and body.startswith(b"Orthanc: ")

