"""Settings: the example configuration, environment overrides, and errors that name the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from config.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "example.yaml"


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_example_loads_with_documented_values():
    settings = load_settings(EXAMPLE, environ={})

    assert settings.dicom.ae_title == "CXRNODE"
    assert settings.dicom.port == 11112
    assert settings.storage.data_dir == Path("var")
    assert [peer.ae_title for peer in settings.dicom.peers] == ["STORESCU", "ECHOSCU", "FINDSCU"]
    for peer in settings.dicom.peers:
        assert peer.allows("127.0.0.1")
        assert not peer.allows("10.0.0.5")


def test_environment_overrides_the_file():
    settings = load_settings(EXAMPLE, environ={
        "CXR_NODE_DICOM__PORT": "11200",
        "CXR_NODE_STORAGE__DATA_DIR": "/tmp/x",
    })

    assert settings.dicom.port == 11200
    assert settings.storage.data_dir == Path("/tmp/x")
    assert settings.dicom.ae_title == "CXRNODE"  # untouched keys keep the file's value


def test_environment_list_override_is_parsed_as_yaml():
    settings = load_settings(EXAMPLE, environ={
        "CXR_NODE_DICOM__PEERS": "[{ae_title: A, hosts: [10.0.0.0/8]}]",
    })

    assert [peer.ae_title for peer in settings.dicom.peers] == ["A"]
    assert settings.dicom.peers[0].allows("10.0.0.5")
    assert not settings.dicom.peers[0].allows("127.0.0.1")


def test_config_path_from_environment_when_none_given(tmp_path):
    path = write_config(tmp_path, {"dicom": {"ae_title": "FROMENV"}})

    settings = load_settings(environ={"CXR_NODE_CONFIG": str(path)})

    assert settings.dicom.ae_title == "FROMENV"


@pytest.mark.parametrize(("data", "expected"), [
    ({"dicom": {"port": 99999}}, ["dicom.port"]),
    ({"dicom": {"portt": 11112}}, ["dicom.portt", "unknown key"]),
    ({"dicom": {"ae_title": "A" * 17}}, ["dicom.ae_title"]),
    ({"dicom": {"ae_title": "AB\\CD"}}, ["dicom.ae_title"]),
    ({"dicom": {"peers": [{"ae_title": "A", "hosts": ["not-an-ip"]}]}},
     ["dicom.peers.0.hosts", "not-an-ip"]),
    ({"dicom": {"tls": {"enabled": True}}}, ["dicom.tls", "certificate"]),
    ({"logging": {"level": "LOUD"}}, ["logging.level", "LOUD"]),
    ({"node": {"device_uid": "1.2.abc"}}, ["node.device_uid"]),
    ({"web": {"port": 0}}, ["web.port"]),
    ({"web": {"bind_address": "localhost"}}, ["web.bind_address", "localhost"]),
    ({"web": {"tls": {"enabled": True}}}, ["web.tls", "certificate"]),
    ({"web": {"metrics_token": "short"}}, ["web.metrics_token", "16"]),
    ({"destinations": [{"name": "PACS", "ae_title": "PACS", "host": "pacs"}]},
     ["destinations.0", "port is required"]),
], ids=["port-range", "unknown-key", "ae-title-too-long", "ae-title-backslash", "peer-host",
        "tls-without-files", "log-level", "device-uid", "web-port", "web-bind-address",
        "web-tls-without-files", "web-metrics-token-too-short", "destination-without-port"])
def test_bad_value_names_the_key(tmp_path, data, expected):
    path = write_config(tmp_path, data)

    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})

    for text in expected:
        assert text in str(error.value)


def _dicomweb(**keys: object) -> dict:
    return {"destinations": [{"name": "ARCHIVE", "kind": "dicomweb", **keys}]}


@pytest.mark.parametrize(("data", "expected"), [
    (_dicomweb(url="ftp://archive.example/dicom-web"),
     'destinations.0.url: "ftp://archive.example/dicom-web" is not an http:// or https:// URL'),
    (_dicomweb(url="archive.example/dicom-web"), "destinations.0.url: "),
    (_dicomweb(url="https://cxr:secret@archive.example/dicom-web"),
     "destinations.0.url: the URL carries credentials; give them as username and password"),
    (_dicomweb(url="https://archive.example/dicom-web", token="t0ken", username="cxr",
               password="secret"),
     "destinations.0: token and username/password are both set; give a bearer token or "
     "basic auth, not both"),
    (_dicomweb(url="https://archive.example/dicom-web", username="cxr"),
     "destinations.0: basic auth needs both username and password"),
    (_dicomweb(url="https://archive.example/dicom-web", token="two words"),
     "destinations.0.token: a bearer token is printable ASCII without spaces"),
    (_dicomweb(url="https://archive.example/dicom-web", ca_file="/nowhere/ca.pem"),
     'destinations.0.ca_file: "/nowhere/ca.pem" is not a readable file'),
    (_dicomweb(), "destinations.0: url is required for kind: dicomweb"),
    (_dicomweb(url="https://archive.example/dicom-web", host="archive.example", port=104),
     "destinations.0: host, port are for kind: dimse only"),
    ({"destinations": [{"name": "PACS", "ae_title": "PACS", "host": "pacs", "port": 104,
                        "url": "https://pacs/dicom-web"}]},
     "destinations.0: url is for kind: dicomweb only; add kind: dicomweb or remove them"),
    ({"destinations": [{"name": "PACS", "kind": "stow", "url": "https://pacs/dicom-web"}]},
     "destinations.0.kind: Input should be 'dimse' or 'dicomweb'"),
], ids=["scheme", "no-scheme", "credentials-in-url", "token-and-basic-auth",
        "username-without-password", "token-with-space", "ca-file-missing", "no-url",
        "dimse-keys-on-dicomweb", "url-on-dimse", "unknown-kind"])
def test_dicomweb_destination_mistake_is_one_line_naming_the_key(tmp_path, data, expected):
    with pytest.raises(ConfigError) as error:
        load_settings(write_config(tmp_path, data), environ={})

    [line] = str(error.value).splitlines()
    assert line.startswith(expected)


@pytest.mark.parametrize(("keys", "expected"), [
    ({"client_certificate": "client.crt"},
     "destinations.0: client_certificate and client_private_key go together (our certificate "
     "and its key, PEM): give both or neither"),
    ({"client_certificate": "client.crt", "client_private_key": "nowhere.key"},
     'destinations.0.client_private_key: "{tmp}/nowhere.key" is not a readable file'),
    ({"url": "http://archive.example/dicom-web", "client_certificate": "client.crt",
      "client_private_key": "client.key"},
     "destinations.0: client_certificate is set but url is not https://; a client "
     "certificate is presented only over TLS"),
    ({"kind": "dimse", "ae_title": "PACS", "host": "pacs", "port": 104, "url": None,
      "client_certificate": "client.crt", "client_private_key": "client.key"},
     "destinations.0: client_certificate, client_private_key are for kind: dicomweb only"),
], ids=["certificate-without-key", "key-missing", "http-url", "on-dimse"])
def test_destination_client_certificate_mistake_is_one_line_naming_the_key(tmp_path, keys,
                                                                           expected):
    for name in ("client.crt", "client.key"):
        (tmp_path / name).write_text("(PEM)")
    given = {k: str(tmp_path / v) if k.startswith("client_") else v for k, v in keys.items()}
    entry = {"name": "ARCHIVE", "kind": "dicomweb", "url": "https://archive.example/dicom-web",
             **given}

    with pytest.raises(ConfigError) as error:
        load_settings(write_config(tmp_path, {"destinations": [
            {k: v for k, v in entry.items() if v is not None}]}), environ={})

    [line] = str(error.value).splitlines()
    assert line.startswith(expected.format(tmp=tmp_path))


@pytest.mark.parametrize(("tls", "expected"), [
    ({"enabled": False, "client_ca_certificates": "ca.crt"},
     "web.tls: client_ca_certificates is set but enabled is false; client certificates come "
     "only over TLS: enable it or remove the key"),
    ({"enabled": True, "certificate": "server.crt", "private_key": "server.key",
      "client_ca_certificates": "nowhere.crt"},
     'web.tls: client_ca_certificates "{tmp}/nowhere.crt" is not a readable file'),
], ids=["tls-off", "file-missing"])
def test_web_client_ca_certificates_mistake_is_one_line_naming_the_key(tmp_path, tls, expected):
    for name in ("ca.crt", "server.crt", "server.key"):
        (tmp_path / name).write_text("(PEM)")
    given = {k: str(tmp_path / v) if isinstance(v, str) else v for k, v in tls.items()}

    with pytest.raises(ConfigError) as error:
        load_settings(write_config(tmp_path, {"web": {"tls": given}}), environ={})

    assert str(error.value) == expected.format(tmp=tmp_path)


def test_dicomweb_destination_keeps_what_the_sender_needs(tmp_path):
    (tmp_path / "ca.pem").write_text("(a CA bundle)")
    settings = load_settings(write_config(tmp_path, {"destinations": [
        {"name": "PACS", "ae_title": "PACS", "host": "pacs", "port": 104},
        {"name": "ARCHIVE", "kind": "dicomweb", "url": "https://archive.example/dicom-web/",
         "username": "cxr", "password": "secret", "ca_file": str(tmp_path / "ca.pem"),
         "timeout_seconds": 30, "send_gsps": False}]}), environ={})

    dimse, web = settings.destinations
    assert (dimse.kind, dimse.where) == ("dimse", "PACS (PACS@pacs:104)")
    assert (web.kind, web.url, web.where) == ("dicomweb", "https://archive.example/dicom-web",
                                              "ARCHIVE (https://archive.example/dicom-web)")
    assert (web.username, web.password, web.verify_tls) == ("cxr", "secret", True)
    assert web.address == "archive.example" and not web.send_gsps


def test_cli_refuses_a_dicomweb_destination_with_two_kinds_of_auth_in_one_line(tmp_path):
    path = write_config(tmp_path, _dicomweb(url="https://archive.example/dicom-web",
                                            token="t0ken", username="cxr", password="pw"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}

    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "--config", str(path), "serve"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "cxr-node: error: destinations.0: token and username/password are both set; give a "
        "bearer token or basic auth, not both"]


def test_missing_config_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        load_settings(missing, environ={})


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.add(key)
        annotation = field.annotation
        if typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _model_keys(annotation, f"{key}.")
    return keys


def _yaml_keys(data: object, prefix: str = "") -> set[str]:
    if isinstance(data, list):
        return set().union(*(_yaml_keys(item, prefix) for item in data))
    if not isinstance(data, dict):
        return set()
    keys = set()
    for name, value in data.items():
        keys.add(f"{prefix}{name}")
        keys |= _yaml_keys(value, f"{prefix}{name}.")
    return keys


def test_example_documents_every_key():
    documented = _yaml_keys(yaml.safe_load(EXAMPLE.read_text()))

    assert _model_keys(Settings) - documented == set()


def test_cli_refuses_bad_config_with_exit_code_2(tmp_path):
    path = write_config(tmp_path, {"dicom": {"port": 0}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}

    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "--config", str(path), "serve"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("cxr-node: error: dicom.port: ")


def test_yaml_syntax_error_is_one_line_naming_the_place(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("dicom:\n  port: 11112\n  peers: [{ae_title: A, hosts: [10.0.0.1]}\n")

    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})

    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert "line 4" in message
    assert "fix the YAML syntax" in message


def test_cli_refuses_yaml_syntax_error_in_one_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("dicom: [port: 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_NODE_")}

    result = subprocess.run(
        [sys.executable, "-m", "node.cli", "--config", str(path), "serve"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"cxr-node: error: {path}: line 2")


def test_one_bad_key_is_one_line(tmp_path):
    path = write_config(tmp_path, {"dicom": {"bind_address": "localhost"}})

    with pytest.raises(ConfigError) as error:
        load_settings(path, environ={})

    assert str(error.value).splitlines() == [
        'dicom.bind_address: "localhost" is not an IP address']


def test_device_uid_derived_from_ae_title():
    first = Settings.model_validate({"dicom": {"ae_title": "NODEA"}})
    again = Settings.model_validate({"dicom": {"ae_title": "NODEA"}})
    other = Settings.model_validate({"dicom": {"ae_title": "NODEB"}})

    assert first.device_uid == again.device_uid
    assert first.device_uid != other.device_uid
    assert len(first.device_uid) <= 64
    assert re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", first.device_uid)


def test_configured_device_uid_wins():
    settings = Settings.model_validate({"node": {"device_uid": "1.2.3.4"}})

    assert settings.device_uid == "1.2.3.4"
