"""`cxr-node serve` refuses what the operator must fix in one line, exit 2, before the model loads.

Each case runs the real command in a subprocess with a configuration as a site would
write it, the analysis worker on (so the model would load). To prove the refusal comes
before the model, the command runs with ``torch`` made unimportable: code that reached
the model would end in an ImportError traceback instead of the one line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from model import BUNDLED_MODEL
from storage.db import POSTGRES_CONNECT_TIMEOUT_SECONDS
from tests.conftest import unavailable
from tests.peers import REPO, NodeProcess
from tests.ports import free_port

# `python -m node.cli` as it is, except that importing torch fails.
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from node.cli import main; "
                 "sys.exit(main())")
# Only a guard against hanging (a connect without a timeout): the refusals take 2-3 s idle
# and 7-9 s on a loaded 2-core machine, so a tight bound would say more about the load than
# the order. The order is proven by torch being unimportable.
FAST_SECONDS = 30.0


def serve_without_model(node: NodeProcess,
                        prefix: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}
    started = time.monotonic()
    result = subprocess.run([*prefix, sys.executable, "-c", WITHOUT_TORCH, "--config",
                             str(node.config_path), "serve"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


def read_only_mount(directory: Path) -> tuple[str, ...]:
    """A command prefix that runs the rest with ``directory`` mounted read-only.

    Permission bits do not stop root (tests run as root), a read-only mount does: a bind
    mount in a private mount namespace, seen only by that command.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        unavailable("unshare (util-linux) is not installed")
    probe = subprocess.run([unshare, "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0"',
                            str(directory)], capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(f"no private read-only mount here: {probe.stderr.strip()}")
    return (unshare, "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && shift && exec "$@"',
            str(directory), "--")


def assert_refused(result: subprocess.CompletedProcess, elapsed: float, *words: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("cxr-node: error: "), line
    for word in words:
        assert word in line
    assert elapsed < FAST_SECONDS
    return line


def analysing_node(tmp_path: Path, **sections: dict) -> NodeProcess:
    worker = {"run_in_serve": True, "device": "cpu", **sections.pop("worker", {})}
    return NodeProcess(tmp_path / "node", worker=worker, **sections)


def test_missing_model_folder_is_refused_before_loading(tmp_path):
    missing = tmp_path / "models" / "nowhere"
    node = analysing_node(tmp_path, worker={"model_dir": str(missing)})

    line = assert_refused(*serve_without_model(node), "worker.model_dir", str(missing))

    assert "card.json" in line  # what to do: a folder with a card and its weights


def test_model_folder_without_weights_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(BUNDLED_MODEL / "card.json", folder / "card.json")
    weights = json.loads((folder / "card.json").read_text())["weights_file"]
    node = analysing_node(tmp_path, worker={"model_dir": str(folder)})

    assert_refused(*serve_without_model(node), "worker.model_dir", weights)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    node = analysing_node(tmp_path)
    node.data_dir.write_text("not a directory")

    assert_refused(*serve_without_model(node), "storage.data_dir", str(node.data_dir),
                   "directory")


def test_read_only_data_dir_is_refused(tmp_path):
    node = analysing_node(tmp_path)
    node.data_dir.mkdir()

    result, elapsed = serve_without_model(node, read_only_mount(node.data_dir))

    assert_refused(result, elapsed, "storage.data_dir", "writable")


def test_port_in_use_is_refused_before_loading(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        node = analysing_node(tmp_path, port=other.getsockname()[1])

        line = assert_refused(*serve_without_model(node), "dicom.port", "in use")

    assert str(node.port) in line


def test_web_port_in_use_is_refused_before_loading(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        node = analysing_node(tmp_path, web={"port": taken})

        line = assert_refused(*serve_without_model(node), "web.port", "in use")

    assert str(taken) in line


def test_bind_address_not_on_this_host_is_refused(tmp_path):
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): documentation only, on no host.
    node = analysing_node(tmp_path, dicom={"bind_address": "192.0.2.1"})

    assert_refused(*serve_without_model(node), "dicom.bind_address", "192.0.2.1")


def test_unreachable_database_is_refused(tmp_path):
    url = f"postgresql+psycopg://cxr:secret@127.0.0.1:{free_port()}/cxr?connect_timeout=5"
    node = analysing_node(tmp_path, database_url=url)

    line = assert_refused(*serve_without_model(node), "storage.database_url", "127.0.0.1")

    assert "secret" not in line  # the password is not printed


def test_database_that_never_answers_is_refused_after_the_connect_timeout(tmp_path):
    # The kernel completes the handshake into the backlog; nothing ever answers libpq.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        # sslmode=disable: one attempt (the default "prefer" tries twice, with and without TLS).
        url = (f"postgresql+psycopg://cxr@127.0.0.1:{silent.getsockname()[1]}/cxr"
               "?sslmode=disable")
        node = analysing_node(tmp_path, database_url=url)

        result, elapsed = serve_without_model(node)

    assert_refused(result, elapsed - POSTGRES_CONNECT_TIMEOUT_SECONDS, "storage.database_url",
                   "timeout")
    assert elapsed > POSTGRES_CONNECT_TIMEOUT_SECONDS


def test_tls_files_that_do_not_load_are_refused(tmp_path):
    pem = tmp_path / "garbage.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    node = analysing_node(tmp_path, dicom={"tls": {
        "enabled": True, "certificate": str(pem), "private_key": str(pem),
        "ca_certificates": str(pem)}})

    assert_refused(*serve_without_model(node), "dicom.tls")


def test_dicomweb_ca_file_that_is_no_pem_bundle_is_refused(tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a not a PEM bundle")
    node = analysing_node(tmp_path, destinations=[{
        "name": "ARCHIVE", "kind": "dicomweb", "url": "https://archive.example/dicom-web",
        "ca_file": str(not_pem)}])

    assert_refused(*serve_without_model(node), "destinations.0.ca_file", str(not_pem), "PEM")


def test_min_free_disk_above_free_space_warns_at_start(tmp_path):
    node = NodeProcess(tmp_path / "node", dicom={"min_free_disk_bytes": 10**18})

    with node:
        log = node.log()

    warnings = [line for line in log.splitlines()
                if "WARNING" in line and "dicom.min_free_disk_bytes" in line]
    assert len(warnings) == 1, log
    assert str(10**18) in warnings[0]

