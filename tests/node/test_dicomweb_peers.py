"""DICOMweb peers: tokens and certificates made known by the CLI admit their peer, and
nothing else does."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import pytest
import yaml

from config.settings import ConfigError, Settings, load_settings
from node.web.dicomweb.peers import Peers, token_sha256
from tests.certificates import Pki, make_pki
from tests.peers import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_token_command_prints_a_token_and_the_entry_that_admits_it(tmp_path):
    result = run_cli("dicomweb", "token", "ris")

    assert result.returncode == 0, result.stderr
    token_line, entry_line = result.stdout.splitlines()
    token = token_line.rsplit(" ", 1)[1]
    assert len(token) >= 43  # 256 bits, URL-safe base64
    entry = entry_line.split(": ", 1)[1]
    config = tmp_path / "cxr-node.yaml"
    config.write_text(f"dicomweb:\n  peers:\n    {entry}\n")
    peers = Peers(load_settings(config, environ={}).dicomweb.peers)
    peer, _ = peers.identify(f"Bearer {token}")
    assert peer is not None and peer.name == "ris"
    assert token not in config.read_text()
    assert run_cli("dicomweb", "token", "ris").stdout != result.stdout  # a new one each time


def test_token_command_refuses_a_bad_name_in_one_line():
    result = run_cli("dicomweb", "token", "a name with spaces")

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        'cxr-node dicomweb token: error: NAME "a name with spaces" is not a peer name '
        "(1-16 of A-Z a-z 0-9 _ . -)"]


def test_only_the_right_bearer_token_identifies_a_peer():
    peers = Peers(load_settings(environ={"CXR_NODE_DICOMWEB__PEERS": (
        f"[{{name: ris, token_sha256: {token_sha256('ris-token-' + 'x' * 40)}}}, "
        f"{{name: vna, token_sha256: {token_sha256('vna-token-' + 'y' * 40)}}}]")}).dicomweb.peers)

    assert peers.identify("Bearer vna-token-" + "y" * 40)[0].name == "vna"
    assert peers.identify("bearer  ris-token-" + "x" * 40)[0].name == "ris"
    assert peers.identify(None) == (None, "no Authorization header (a bearer token is required)")
    assert peers.identify("Bearer ris-token-")[1] == "unknown bearer token"
    assert "not a bearer token" in peers.identify("Basic cmlzOnBhc3M=")[1]


@pytest.mark.parametrize(("peers", "key"), [
    ([{"name": "ris", "token_sha256": "not-a-digest"}], "dicomweb.peers.0.token_sha256"),
    ([{"name": "a name", "token_sha256": "0" * 64}], "dicomweb.peers.0.name"),
    ([{"name": "ris", "token_sha256": "0" * 64}, {"name": "ris", "token_sha256": "1" * 64}],
     "dicomweb.peers"),
])
def test_a_wrong_peer_setting_is_one_line_naming_the_key(tmp_path, peers, key):
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump({"dicomweb": {"peers": peers}}))

    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})

    assert str(error.value).startswith(f"{key}: ")
    assert "\n" not in str(error.value)


@pytest.fixture
def pki(tmp_path, tool) -> Pki:
    return make_pki(tool, tmp_path / "pki")


def der(pki: Pki, name: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pki.crt(name).read_text())


def with_client_cas(pki: Pki, peers: list[dict]) -> dict:
    return {"web": {"tls": {"enabled": True, "certificate": str(pki.crt("server")),
                            "private_key": str(pki.key("server")),
                            "client_ca_certificates": str(pki.crt("ca"))}},
            "dicomweb": {"peers": peers}}


def test_certificate_command_prints_the_entry_that_admits_the_certificate(tmp_path, pki, tool):
    result = run_cli("dicomweb", "certificate", "ris", str(pki.crt("client")))

    assert result.returncode == 0, result.stderr
    comment, entry_line = result.stdout.splitlines()
    assert comment.startswith("# CN=client,O=cxr-node tests, expires 20")
    assert comment.endswith(" UTC")
    entry = yaml.safe_load(entry_line.split(": - ", 1)[1])
    # The digest openssl prints (AB:CD:...) is the same one.
    fingerprint = subprocess.run([tool("openssl"), "x509", "-in", str(pki.crt("client")),
                                  "-noout", "-fingerprint", "-sha256"], capture_output=True,
                                 text=True, check=True).stdout.strip().split("=", 1)[1]
    assert entry == {"name": "ris", "certificate_sha256": fingerprint.replace(":", "").lower()}
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump(with_client_cas(pki, [entry])))
    peers = Peers(load_settings(config, environ={}).dicomweb.peers)
    assert peers.identify(None, der(pki, "client"))[0].name == "ris"
    assert peers.identify(None, der(pki, "stranger"))[0] is None


@pytest.mark.parametrize("which", ["key", "missing"])
def test_certificate_command_refuses_what_is_not_a_pem_certificate_in_one_line(pki, which):
    path = pki.key("client") if which == "key" else pki.folder / "nowhere.crt"

    result = run_cli("dicomweb", "certificate", "ris", str(path))

    assert result.returncode == 2
    expected = ("is not a PEM certificate (-----BEGIN CERTIFICATE-----)" if which == "key"
                else "No such file or directory")
    assert result.stderr.splitlines() == [
        f"cxr-node dicomweb certificate: error: {path}{' ' if which == 'key' else ': '}"
        f"{expected}"]


def test_a_peers_certificate_admits_it_and_another_certificate_is_named_by_its_digest(pki):
    token = "ris-token-" + "x" * 40
    peers = Peers(Settings.model_validate(with_client_cas(pki, [
        {"name": "modality", "certificate_sha256": pki.sha256("client")},
        {"name": "ris", "token_sha256": token_sha256(token)}])).dicomweb.peers)

    assert peers.identify(None, der(pki, "client"))[0].name == "modality"
    # A certificate that is no peer's: the token decides, as without a certificate.
    assert peers.identify(f"Bearer {token}", der(pki, "stranger"))[0].name == "ris"
    assert peers.identify(None, der(pki, "stranger")) == (None, (
        f"the client certificate (SHA-256 {pki.sha256('stranger')}) is not a peer's; "
        "no Authorization header"))
    assert peers.identify("Bearer guess", der(pki, "stranger"))[1].endswith(
        "is not a peer's; unknown bearer token")
    assert peers.identify(None) == (None, "no client certificate or Authorization header (a "
                                          "peer's certificate or bearer token is required)")


def test_openssl_fingerprint_form_is_taken_and_kept_as_plain_hex(pki):
    colons = ":".join(pki.sha256("client")[i:i + 2].upper() for i in range(0, 64, 2))

    settings = Settings.model_validate(with_client_cas(pki, [
        {"name": "modality", "certificate_sha256": colons}]))

    assert settings.dicomweb.peers[0].certificate_sha256 == pki.sha256("client")


@pytest.mark.parametrize(("peers", "key", "words"), [
    ([{"name": "ris"}], "dicomweb.peers.0",
     "peer ris has neither token_sha256 nor certificate_sha256; give one of them, or both"),
    ([{"name": "ris", "certificate_sha256": "AB:CD"}], "dicomweb.peers.0.certificate_sha256",
     "is not a SHA-256 digest (64 hex digits, with or without colons)"),
    ([{"name": "ris", "certificate_sha256": "a" * 64},
      {"name": "pacs", "certificate_sha256": "A" * 64}], "dicomweb.peers",
     "peers pacs, ris have the same certificate_sha256"),
], ids=["neither-digest", "bad-certificate-digest", "shared-certificate"])
def test_a_wrong_certificate_peer_is_one_line_naming_the_key(pki, tmp_path, peers, key, words):
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump(with_client_cas(pki, peers)))

    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})

    [line] = str(error.value).splitlines()
    assert line.startswith(f"{key}: ") and words in line


def test_a_certificate_peer_without_client_ca_certificates_is_refused_naming_the_key(tmp_path):
    config = tmp_path / "cxr-node.yaml"
    config.write_text(yaml.safe_dump({"dicomweb": {"peers": [
        {"name": "ris", "token_sha256": "0" * 64},
        {"name": "modality", "certificate_sha256": "a" * 64}]}}))

    with pytest.raises(ConfigError) as error:
        load_settings(config, environ={})

    assert str(error.value) == (
        "dicomweb.peers.1.certificate_sha256: peer modality is known by a client certificate, "
        "but web.tls.client_ca_certificates is not set, so the web service never asks for "
        "one: set it (the CAs that sign the peers' certificates) or remove the key")
