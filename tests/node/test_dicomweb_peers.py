"""DICOMweb peers: tokens made by the CLI admit their peer, and nothing else does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from config.settings import ConfigError, load_settings
from node.web.dicomweb.peers import Peers, token_sha256
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
