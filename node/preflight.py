"""Start-up checks that need no model: each refusal names the setting and what to do.

Loading the detector takes seconds (torch, then the weights), so everything that can be
wrong without it is checked first: the data directory, the database, the listening
address and the model folder. A problem the operator must fix raises
:class:`config.settings.ConfigError` with one line, ``<key>: <what is wrong>; <what to do>``,
which the CLI prints and exits with 2 instead of a traceback.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from config.settings import ConfigError, Settings
from model import BUNDLED_MODEL
from model.card import CardError, ModelCard
from storage.backup import RESTORE_MARKER
from storage.db import Database

LOGGER = logging.getLogger("cxr_node.preflight")


def check_data_dir(settings: Settings) -> Path:
    """``storage.data_dir`` as a writable directory, created if missing.

    Writability is proven by writing and removing a file, not by permission bits: root
    passes any mode check, and a read-only mount fails only at the write.
    """
    data_dir = Path(settings.storage.data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ConfigError(f"storage.data_dir: {data_dir} is a file, not a directory; "
                          "choose a directory (it is created if missing)")
    if (data_dir / RESTORE_MARKER).exists():
        raise ConfigError(f"storage.data_dir: {data_dir} holds a restore that did not finish; "
                          "empty it and the database, and run cxr-node restore again")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=data_dir, prefix=".write-probe-")
        try:
            os.write(fd, b"cxr-node")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"storage.data_dir: {data_dir} is not a writable directory "
                          f"({exc.strerror or exc}); choose a writable directory") from None
    return data_dir


def warn_if_disk_low(settings: Settings) -> None:
    """Warn when the data volume already has less free space than stores are refused below."""
    floor = settings.dicom.min_free_disk_bytes
    free = shutil.disk_usage(settings.storage.data_dir).free
    if free < floor:
        LOGGER.warning("dicom.min_free_disk_bytes is %d but %s has %d bytes free: every "
                       "association will be refused as transient until space is freed or "
                       "the setting lowered", floor, settings.storage.data_dir, free)


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def connect_database(settings: Settings, upgrade: bool = True) -> Database:
    """The configured database, reachable and migrated, or a one-line :class:`ConfigError`."""
    url = settings.storage.resolved_database_url()
    try:
        return Database.for_storage(settings.storage, upgrade)
    except ArgumentError:
        raise ConfigError(f"storage.database_url: {_safe_url(url)} is not a database URL; use "
                          "e.g. postgresql+psycopg://user:password@host/name") from None
    except DBAPIError as exc:
        lines = str(exc.orig or exc).strip().splitlines()
        reason = lines[0].strip() if lines else type(exc.orig or exc).__name__
        raise ConfigError(f"storage.database_url: cannot use {_safe_url(url)} ({reason}); "
                          "check that the server runs and the URL is right") from None
    except CommandError as exc:  # Alembic: e.g. a schema newer than this code knows
        raise ConfigError(f"storage.database_url: {_safe_url(url)} cannot be migrated ({exc}); "
                          "use this cxr-node version's database or upgrade cxr-node") from None
    except ModuleNotFoundError as exc:  # the URL names a driver that is not installed
        raise ConfigError(f"storage.database_url: driver {exc.name} is not installed; "
                          "use postgresql+psycopg:// or sqlite:///") from None


def check_listen_address(settings: Settings) -> None:
    """Bind and close a probe socket on ``dicom.bind_address``/``dicom.port``.

    The probe sets SO_REUSEADDR as pynetdicom's server does, so it succeeds exactly when
    the listener's own bind would (Linux still refuses a port another socket listens on).
    """
    dicom = settings.dicom
    family = (socket.AF_INET6 if ipaddress.ip_address(dicom.bind_address).version == 6
              else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((dicom.bind_address, dicom.port))
        except OSError as exc:
            raise listen_error(settings, exc) from None


def check_tls(settings: Settings) -> None:
    """The listener's certificate, key and CA file load (settings only checked they exist)."""
    tls = settings.dicom.tls
    if not tls.enabled:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
        context.load_verify_locations(str(tls.ca_certificates))
    except ssl.SSLError as exc:
        raise listen_error(settings, exc) from None
    except OSError as exc:
        raise ConfigError(f"dicom.tls: cannot read {exc.filename or 'a TLS file'} "
                          f"({exc.strerror or exc}); make it readable by this process") from None


def check_destination_tls_files(settings: Settings) -> None:
    """Each DICOMweb destination's ``ca_file`` loads as PEM, and its client certificate
    with its key (settings only checked the files exist); otherwise every send would fail
    on them, each a retry, until the dead letters."""
    for index, destination in enumerate(settings.destinations):
        if destination.ca_file is not None:
            key = f"destinations.{index}.ca_file"
            try:
                ssl.create_default_context(cafile=str(destination.ca_file))
            except ssl.SSLError as exc:
                raise ConfigError(f"{key}: {destination.ca_file} holds no PEM CA certificate "
                                  f"({exc.reason or exc}); give the PEM bundle of the CAs "
                                  "that sign the server's certificate") from None
            except OSError as exc:
                raise _unreadable(key, destination.ca_file, exc) from None
        if destination.client_certificate is not None:
            key = f"destinations.{index}.client_certificate"
            try:
                ssl.create_default_context().load_cert_chain(
                    str(destination.client_certificate), str(destination.client_private_key))
            except ssl.SSLError as exc:
                raise ConfigError(f"{key}: {destination.client_certificate} does not load "
                                  f"with client_private_key ({exc.reason or exc}); give PEM "
                                  "files whose key matches the certificate") from None
            except OSError as exc:
                raise _unreadable(key, exc.filename or destination.client_certificate,
                                  exc) from None


def _unreadable(key: str, path: object, exc: OSError) -> ConfigError:
    return ConfigError(f"{key}: cannot read {path} ({exc.strerror or exc}); make it readable "
                       "by this process")


def listen_error(settings: Settings, exc: OSError) -> ConfigError:
    """The one-line refusal for an ``OSError`` from starting the listener."""
    if isinstance(exc, ssl.SSLError):
        return ConfigError(f"dicom.tls: the certificate, private key or CA file does not load "
                           f"({exc.reason or exc}); give PEM files whose key matches the "
                           "certificate")
    return bind_error("dicom", settings.dicom.bind_address, settings.dicom.port, "dicom.port",
                      exc)


def bind_error(section: str, address: str, port: int, port_key: str,
               exc: OSError) -> ConfigError:
    """The one-line refusal for a socket of ``section`` (dicom, web) that cannot bind."""
    where = f"{address}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"{port_key}: {where} is already in use by another process; stop "
                           "that process or choose another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError(f"{section}.bind_address: {address} is not an address of this "
                           "host; use one of its addresses, or 0.0.0.0 for all")
    if exc.errno == errno.EACCES:
        return ConfigError(f"{port_key}: {where} needs privileges to bind; choose a port "
                           "above 1023 or grant CAP_NET_BIND_SERVICE")
    return ConfigError(f"{section}.bind_address: cannot listen on {where} "
                       f"({exc.strerror or exc}); choose another address or port")


def check_model(settings: Settings, db: Database) -> None:
    """The model a worker will load has a valid card and weights that match it."""
    from training.registry import active_version

    with db.session() as session:
        active = active_version(session)
        found = (Path(active.path), active.id) if active is not None else None
    if found is not None:
        path, version_id = found
        key = f"model version {version_id} (the registry's active model)"
        action = "restore that folder or `cxr-node models rollback`"
    else:
        path = settings.worker.model_dir or BUNDLED_MODEL
        key = "worker.model_dir" if settings.worker.model_dir else "bundled model"
        action = "point worker.model_dir at a folder with card.json and its weights"
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a folder; {action}")
    try:
        ModelCard.load(path)
    except CardError as exc:
        raise ConfigError(f"{key}: {path}: {exc}; {action}") from None


def open_checked(settings: Settings, listen: bool, analyse: bool) -> Database:
    """Every check above, in order, before a model is loaded; the migrated database."""
    check_data_dir(settings)
    warn_if_disk_low(settings)
    check_destination_tls_files(settings)
    db = connect_database(settings)
    try:
        if listen:
            check_tls(settings)
            check_listen_address(settings)
        if analyse:
            check_model(settings, db)
    except BaseException:
        db.dispose()
        raise
    return db
