"""OHIF's files as the node serves them at /viewer/: behind the console login, moved from
the site's root to /viewer/, configured for the node's own DICOMweb.

Most tests use a small stand-in ``dist`` (the real one is 200 MB); the last pins each
rewrite of node.web.ohif to OHIF's real files, so that a new OHIF build that moves them
fails here rather than in a radiologist's browser.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from node.metrics import NodeMetrics
from node.viewer import DEFAULT_OHIF_DIST
from node.web.app import build_app
from node.web.auth import Accounts
from node.web.health import Readiness
from node.web.ohif import REWRITES, rewritten
from node.web.server import WebServer
from storage import accounts
from storage.accounts import Passwords
from storage.db import Database
from tests.conftest import unavailable
from tests.integration.console import PASSWORD, Browser
from tests.ports import free_port

pytestmark = pytest.mark.integration
PAGE = ('<html><head><link href="/app.bundle.css" rel="stylesheet">'
        '<script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>'
        '<script src="/app.bundle.js"></script></head><body>OHIF</body></html>')


def _serve(tmp_path: Path, dist: Path) -> tuple[WebServer, Database]:
    settings = Settings.model_validate({
        "storage": {"data_dir": str(tmp_path / "data")},
        "web": {"bind_address": "127.0.0.1", "port": free_port()}})
    db = Database.connect(settings.storage.resolved_database_url())
    from argon2 import PasswordHasher

    passwords = Passwords(PasswordHasher(memory_cost=8192))
    with db.session() as session:
        accounts.add_user(session, passwords, "vera", "viewer", PASSWORD)
    app = build_app(settings, Readiness(), NodeMetrics(), "serve",
                    Accounts(settings, db, passwords), ohif_dist=dist)
    server = WebServer(app, settings.web, settings.web.port, "web.port")
    server.start()
    return server, db


@pytest.fixture
def node_with(tmp_path):
    running = []

    def start(dist: Path) -> Browser:
        server, db = _serve(tmp_path, dist)
        running.append((server, db))
        return Browser(server.url.rstrip("/"))

    yield start
    for server, db in running:
        server.stop()
        db.dispose()


@pytest.fixture
def dist(tmp_path) -> Path:
    folder = tmp_path / "dist"
    folder.mkdir()
    (folder / "index.html").write_text(PAGE)
    (folder / "app.bundle.js").write_text('__webpack_require__.p = "/";\nconsole.log(1)')
    (folder / "app.bundle.css").write_text("@font-face{src:url(/a.woff2)}")
    (folder / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("not for the browser")
    return folder


def test_ohif_is_served_under_viewer_and_reads_the_nodes_dicomweb(node_with, dist):
    browser = node_with(dist)
    browser.logged_in_as("vera", "viewer")

    page = browser.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")  # one of OHIF's routes
    study_list = browser.get("/viewer/")
    config = browser.get("/viewer/app-config.js")
    bundle = browser.get("/viewer/app.bundle.js")
    style = browser.get("/viewer/app.bundle.css")
    codec = browser.get("/viewer/codec.wasm")

    assert page.status == 200 and page.body == study_list.body
    assert 'src="/viewer/app.bundle.js"' in page.body
    assert 'href="/viewer/app.bundle.css"' in page.body
    assert 'window.PUBLIC_URL="/viewer/"' in page.body and '="/app' not in page.body
    assert page.headers["cache-control"] == "no-store"
    assert config.headers["content-type"].startswith("text/javascript")
    assert '"qidoRoot": "/dicomweb"' in config.body and '"wadoRoot": "/dicomweb"' in config.body
    assert "routerBasename: '/viewer'" in config.body
    assert bundle.body.startswith('__webpack_require__.p = "/viewer/";')  # its chunks
    assert style.body == "@font-face{src:url(/viewer/a.woff2)}"
    assert codec.headers["content-type"] == "application/wasm"  # compiled only with this type
    assert browser.get("/viewer/missing.js").status == 404
    assert browser.get("/viewer").location == "/viewer/"
    for path in ("/viewer/../secret.txt", "/viewer/%2e%2e/secret.txt", "/viewer/..%2fsecret.txt"):
        assert "not for the browser" not in browser.get(path).body


def test_the_viewer_asks_for_a_login_and_comes_back_to_the_same_study(node_with, dist):
    browser = node_with(dist)

    first = browser.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    script = browser.get("/viewer/app.bundle.js")
    login_page = browser.get(first.location)
    token = browser.csrf(first.location)
    login = browser.post("/login", {"csrf_token": token, "name": "vera", "password": PASSWORD,
                                    "next": "/viewer/viewer?StudyInstanceUIDs=1.2.3"})

    assert first.status == 303
    assert first.location == "/login?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D1.2.3"
    assert script.status == 303 and "console.log" not in script.body
    assert 'value="/viewer/viewer?StudyInstanceUIDs=1.2.3"' in login_page.body
    assert login.status == 303 and login.location == "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    assert browser.get(login.location).status == 200


def test_without_ohif_installed_the_page_says_how_to_install_it(node_with, tmp_path):
    browser = node_with(tmp_path / "nowhere")
    browser.logged_in_as("vera", "viewer")

    answer = browser.get("/viewer/")

    assert answer.status == 404 and "make viewer-assets" in answer.body


def test_each_rewrite_matches_ohifs_real_files():
    """The references node.web.ohif moves are where OHIF's build put them (and no
    protocol-relative ``//host`` reference would be broken by the page's rewrite)."""
    if not (DEFAULT_OHIF_DIST / "index.html").is_file():
        unavailable(f"OHIF is not in {DEFAULT_OHIF_DIST} (run `make viewer-assets`)")
    page = (DEFAULT_OHIF_DIST / "index.html").read_bytes()
    scripts = sorted(DEFAULT_OHIF_DIST.glob("*.js"))
    styles = sorted(DEFAULT_OHIF_DIST.glob("*.css"))

    for suffix, old, _ in REWRITES:
        files = {".html": [DEFAULT_OHIF_DIST / "index.html"], ".js": scripts, ".css": styles}
        assert any(old in path.read_bytes() for path in files[suffix]), (suffix, old)
    assert b'window.PUBLIC_URL="/"' in page and b'="//' not in page
    app_bundle = next(path for path in scripts if path.name.startswith("app.bundle."))
    assert b'__webpack_require__.p = "/viewer/";' in rewritten(app_bundle)
    for path in scripts:  # every webpack runtime (the app's and its workers') moves
        assert b'__webpack_require__.p = "/";' not in (rewritten(path) or path.read_bytes())
