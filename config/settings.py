"""The node's one typed settings object, loaded from YAML and the environment.

A site configures cxr-node with a YAML file (``cxr-node --config FILE`` or the
``CXR_NODE_CONFIG`` variable) and may override any key with an environment variable
``CXR_NODE_<SECTION>__<KEY>`` (for example ``CXR_NODE_DICOM__PORT=11200``), which is how
containers and tests set ports and paths. Everything is validated at start-up: a wrong
value stops the process with a message that names the key, rather than failing later on
the first association that needs it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "CXR_NODE_"
CONFIG_ENV_VAR = "CXR_NODE_CONFIG"

# PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or
# control characters; leading and trailing spaces are not significant.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
# PS3.5 9.1: a UID is dot-separated digit groups, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(f'"{value}" is not a valid AE title (1-16 printable characters, no "\\")')
    return stripped


def _unique_by_name(items: list, what: str) -> list:
    """``items`` unless two share a ``name``: the message lists the repeated names."""
    names = [item.name for item in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique, repeated: {duplicates}")
    return items


def _check_ip_address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f'"{value}" is not an IP address') from exc
    return value


class Peer(_Section):
    """A calling AE title allowed to associate, and the addresses it may come from."""

    ae_title: str
    hosts: list[str] = Field(min_length=1)

    _check_title = field_validator("ae_title")(_check_ae_title)

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError as exc:
                raise ValueError(f'"{host}" is not an IP address or network') from exc
        return hosts

    def allows(self, address: str) -> bool:
        """Whether ``address`` is one of this peer's hosts; an unparseable address is not."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in ipaddress.ip_network(h, strict=False) for h in self.hosts)


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 B.12, BCP 195): TLS 1.2 or later; peers must present a certificate."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None

    @model_validator(mode="after")
    def _files_present(self) -> TlsSettings:
        return _require_files(self, ("certificate", "private_key", "ca_certificates"))


def _require_files(tls, names: tuple[str, ...]):  # noqa: ANN001, ANN202 - a TLS section
    """A TLS section that is enabled names each of ``names``, and each is a file."""
    if not tls.enabled:
        return tls
    for name in names:
        path = getattr(tls, name)
        if path is None:
            raise ValueError(f"{name} is required when TLS is enabled")
        if not Path(path).is_file():
            raise ValueError(f'{name} "{path}" is not a readable file')
    return tls


class DicomSettings(_Section):
    """The listener: identity, who may connect, and the limits that protect the node."""

    ae_title: str = "CXRNODE"
    bind_address: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    peers: list[Peer] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1, le=1000)
    # Connections from one address that have not yet sent a whole A-ASSOCIATE-RQ; more are
    # closed at once (audited), so no host can hold the listener with half-sent requests.
    max_pending_connections_per_address: int = Field(default=4, ge=1, le=1000)
    # Largest P-DATA PDU we accept (PS3.8 9.3.1); a PDU declaring more aborts the association.
    max_pdu_bytes: int = Field(default=1_048_576, ge=4096, le=64 * 1_048_576)
    acse_timeout_seconds: float = Field(default=30.0, gt=0)
    dimse_timeout_seconds: float = Field(default=60.0, gt=0)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    max_instance_bytes: int = Field(default=2 * 1024**3, ge=1024)
    min_free_disk_bytes: int = Field(default=2 * 1024**3, ge=0)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    _check_title = field_validator("ae_title")(_check_ae_title)

    _check_bind = field_validator("bind_address")(_check_ip_address)

    def peer(self, ae_title: str) -> Peer | None:
        wanted = ae_title.strip()
        return next((p for p in self.peers if p.ae_title == wanted), None)


class StorageSettings(_Section):
    """Where files and state live. The database URL defaults to SQLite under data_dir."""

    data_dir: Path = Path("var")
    database_url: str | None = None
    sqlite_busy_timeout_seconds: float = Field(default=30.0, gt=0)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cxr-node.sqlite3').resolve()}"


class CompletionSettings(_Section):
    """When a study counts as complete: no open association and a quiet period."""

    study_quiet_seconds: float = Field(default=2.0, ge=0)
    check_interval_seconds: float = Field(default=0.25, gt=0, le=60)


class NodeSettings(_Section):
    """The node's identity, stamped into what it produces and used to recognise it."""

    device_name: str = "cxr-node"
    # Empty: derived from the AE title, stable across restarts (see Settings.device_uid).
    device_uid: str | None = None

    @field_validator("device_uid")
    @classmethod
    def _check_uid(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 64 or not _UID.match(value)):
            raise ValueError(f'"{value}" is not a DICOM UID (digits and dots, at most 64)')
        return value


class WorkerSettings(_Section):
    """Analysis workers: how they claim jobs and which model they run."""

    # Run a worker inside `cxr-node serve`; turn off where `cxr-node worker` runs elsewhere.
    run_in_serve: bool = True
    # Empty: the bundled model. Otherwise a folder with card.json and the weights.
    model_dir: Path | None = None
    # "auto" picks CUDA when present, else the CPU; or "cpu", "cuda", "cuda:1".
    device: str = "auto"
    # A claimed job not finished within this time is taken again by another worker.
    lease_seconds: float = Field(default=120.0, ge=5)
    poll_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    # Jobs claimed at once; their images are batched through the model together. Empty:
    # 8 on a GPU, 1 on the CPU (where a batch costs as much per image and delays the first).
    max_jobs_per_batch: int | None = Field(default=None, ge=1, le=256)
    images_per_batch: int = Field(default=16, ge=1, le=512)
    # torch.compile the network at start, for batches of 1 and images_per_batch (eager,
    # logged, if compilation fails). Empty: on for CUDA, off for the CPU.
    compile: bool | None = None
    # A job that failed this many times is marked failed and audited.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Send a short SR "not analysed: <reason>" for studies the gate skipped.
    report_not_analysed: bool = True

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", value):
            raise ValueError(f'"{value}" is not one of auto, cpu, cuda, cuda:<index>')
        return value


class DestinationKind(StrEnum):
    """How results reach a destination: C-STORE to an AE, or STOW-RS (PS3.18 10.5)."""

    DIMSE = "dimse"
    DICOMWEB = "dicomweb"


_DIMSE_KEYS = ("ae_title", "host", "port", "tls")
_DICOMWEB_KEYS = ("url", "token", "username", "password", "verify_tls", "ca_file",
                  "client_certificate", "client_private_key", "timeout_seconds")


def _listed(keys: list[str]) -> str:
    return f"{', '.join(keys)} {'is' if len(keys) == 1 else 'are'}"


def _check_header_value(value: str, what: str) -> str:
    """Printable ASCII without spaces: a value that goes into an HTTP header as it is."""
    if not value or not all("!" <= c <= "~" for c in value):
        raise ValueError(f"a {what} is printable ASCII without spaces or control characters")
    return value


class Destination(_Section):
    """A node that receives our results (a PACS, a viewer, an archive), and what it gets.

    ``kind: dimse`` (the default) is a DICOM AE reached by C-STORE at ae_title@host:port;
    ``kind: dicomweb`` is a DICOMweb service reached by STOW-RS at ``url``. Keys of the
    other kind are refused rather than ignored, so that a half-converted entry (a url
    beside a host) says so at start-up instead of sending somewhere unexpected.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: DestinationKind = DestinationKind.DIMSE
    # kind: dimse
    ae_title: str | None = None
    host: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    # kind: dicomweb -- the service's base URL (STOW-RS posts to <url>/studies/<study>),
    # a bearer token or basic auth (username and password), how the server's certificate
    # is checked (the system's CAs, or those in ca_file), and our client certificate for
    # a service that asks for one (mutual TLS).
    url: str | None = None
    token: str | None = None
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    client_certificate: Path | None = None
    client_private_key: Path | None = None
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    send_sr: bool = True
    send_gsps: bool = True
    send_secondary_capture: bool = True
    # A PACS without Comprehensive 3D SR storage gets the same report as Comprehensive SR.
    sr_storage: str = Field(default="comprehensive-3d", pattern=r"^comprehensive(-3d)?$")

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f'"{value}" is not an http:// or https:// URL with a host '
                             "(e.g. https://pacs.example.org/dicom-web)")
        if parts.username is not None or parts.password is not None:
            # The console shows URLs as they are; credentials belong in the masked keys.
            raise ValueError("the URL carries credentials; give them as username and "
                             "password (or token), which the console never shows")
        if parts.query or parts.fragment:
            raise ValueError(f'"{value}" has a query or fragment; give the service\'s base '
                             "URL (STOW-RS appends /studies/<study>)")
        try:
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as exc:
            raise ValueError(f'"{value}": {exc}') from None
        return value.strip().rstrip("/")

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        return None if value is None else _check_header_value(value, "bearer token")

    @field_validator("username")
    @classmethod
    def _check_username(cls, value: str | None) -> str | None:
        if value is not None and (not value or ":" in value or not value.isprintable()):
            raise ValueError("a basic-auth username is printable and has no colon "
                             "(RFC 7617)")
        return value

    @field_validator("password")
    @classmethod
    def _check_password(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.isprintable()):
            raise ValueError("a basic-auth password is printable and not empty")
        return value

    @field_validator("ca_file", "client_certificate", "client_private_key")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f'"{value}" is not a readable file')
        return value

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> Destination:
        given = self.model_fields_set
        if self.kind == DestinationKind.DIMSE:
            foreign = [key for key in _DICOMWEB_KEYS if key in given]
            if foreign:
                raise ValueError(f"{_listed(foreign)} for kind: dicomweb only; add "
                                 "kind: dicomweb or remove them")
            missing = [key for key in ("ae_title", "host", "port") if getattr(self, key) is None]
            if missing:
                raise ValueError(f"{_listed(missing)} required for a DICOM destination "
                                 "(kind: dimse, the default)")
            return self
        foreign = [key for key in _DIMSE_KEYS if key in given]
        if foreign:
            raise ValueError(f"{_listed(foreign)} for kind: dimse only; a dicomweb "
                             "destination is reached at its url")
        if self.url is None:
            raise ValueError("url is required for kind: dicomweb (the service's base URL, "
                             "e.g. https://pacs.example.org/dicom-web)")
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("token and username/password are both set; give a bearer "
                             "token or basic auth, not both")
        if (self.username is None) != (self.password is None):
            raise ValueError("basic auth needs both username and password")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is set but verify_tls is false; the CA file would be "
                             "ignored: remove one")
        if (self.client_certificate is None) != (self.client_private_key is None):
            raise ValueError("client_certificate and client_private_key go together (our "
                             "certificate and its key, PEM): give both or neither")
        if self.client_certificate is not None and not self.url.startswith("https://"):
            raise ValueError("client_certificate is set but url is not https://; a client "
                             "certificate is presented only over TLS")
        return self

    @property
    def address(self) -> str:
        """The host results go to, for logs and the audit trail."""
        if self.kind == DestinationKind.DICOMWEB:
            return urlsplit(self.url).hostname or ""
        return self.host or ""

    @property
    def where(self) -> str:
        """How a person recognises this destination in an error: name and address."""
        if self.kind == DestinationKind.DICOMWEB:
            return f"{self.name} ({self.url})"
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


class SendingSettings(_Section):
    """The outbox: retries with exponential back-off, then a dead letter."""

    first_retry_delay_seconds: float = Field(default=5.0, gt=0)
    backoff_factor: float = Field(default=2.0, ge=1)
    max_retry_delay_seconds: float = Field(default=300.0, gt=0)
    # A transfer still failing this long after it was queued becomes a dead letter.
    max_age_seconds: float = Field(default=86400.0, gt=0)
    poll_interval_seconds: float = Field(default=0.2, gt=0, le=60)
    # A claimed transfer not finished within this time is taken again by another sender.
    lease_seconds: float = Field(default=120.0, ge=5)
    # Objects sent on one association at most.
    max_objects_per_association: int = Field(default=100, ge=1, le=10000)


class LabelSettings(_Section):
    """Where radiologist labels come from and how imported rows find their images."""

    # SRs (TID 1500) from these calling AE titles are labels (e.g. the PACS forwarding
    # what a viewer saved); an SR whose observer is a person is a label from any peer.
    labeller_ae_titles: list[str] = Field(default_factory=list)
    # The DICOM attribute an import's image key is compared with (SOPInstanceUID, or e.g.
    # ImageComments holding the NIH "Image Index" of a converted image).
    match_attribute: str = Field(default="SOPInstanceUID", pattern=r"^[A-Za-z]+$")
    # NIH ChestX-ray8 "Pneumonia" boxes: a vocabulary label, or empty to keep them unmapped.
    nih_pneumonia_as: str | None = "Infiltration"
    # VinDr-CXR reader consensus: majority, any or all readers, boxes matched at this IoU.
    vindr_consensus: str = Field(default="majority", pattern=r"^(majority|any|all)$")
    vindr_iou: float = Field(default=0.4, gt=0, le=1)

    @field_validator("labeller_ae_titles")
    @classmethod
    def _check_titles(cls, titles: list[str]) -> list[str]:
        return [_check_ae_title(title) for title in titles]


class TrainingSettings(_Section):
    """Site retraining: dataset splits, the training run, and the promotion gate."""

    # Where snapshots and training runs are written (relative paths: under data_dir).
    runs_dir: Path = Path("training")
    # Patients new to the dataset join the locked test set and validation at these rates.
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    epochs: int = Field(default=10, ge=1, le=1000)
    # The global batch: with several processes each trains on batch_size / nproc_per_node.
    batch_size: int = Field(default=8, ge=1, le=512)
    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    # Training processes on this host (one per GPU) for `cxr-node retrain` and the
    # scheduler's retraining, started through torchrun (DistributedDataParallel; NCCL on
    # GPUs, gloo on CPUs); 1 trains in the calling process. `--nproc-per-node` overrides.
    nproc_per_node: int = Field(default=1, ge=1, le=64)
    # The operating point each finding's threshold is chosen for on validation (the widest
    # margin over both; sensitivity first where both cannot hold).
    target_sensitivity: float = Field(default=0.90, gt=0, lt=1)
    target_specificity: float = Field(default=0.90, gt=0, lt=1)
    # Retrain only when at least this many studies were labelled since the last snapshot.
    min_new_labelled_studies: int = Field(default=50, ge=0)
    # A candidate may be at most this much below the active model in sensitivity and in
    # specificity for every finding on the locked test set.
    promotion_margin: float = Field(default=0.02, ge=0, le=1)
    # Promote a candidate that passes the gate without an admin's `cxr-node models promote`.
    auto_promote: bool = False


_CRON = re.compile(r"^\S+(\s+\S+){4,5}$")


def _check_cron(value: str) -> str:
    if not _CRON.match(value.strip()):
        raise ValueError(f'"{value}" is not a cron expression (5 fields: minute hour day '
                         "month weekday; or 6 with seconds first)")
    return value.strip()


class SchedulerSettings(_Section):
    """`cxr-node scheduler`: when retraining, the audit report and retention run."""

    timezone: str = "UTC"
    # Weekly, Sunday 02:00; it trains only after training.min_new_labelled_studies.
    retrain_cron: str = "0 2 * * 0"
    # Daily at 06:00: the audit report of the previous day, and performance alerts.
    report_cron: str = "0 6 * * *"
    # Daily at 03:30: received images older than retention_days that are in no dataset
    # snapshot are deleted (results and audit rows are kept). 0 keeps images for ever.
    retention_cron: str = "30 3 * * *"
    retention_days: int = Field(default=0, ge=0)
    # Reports are written under <data_dir>/<reports_dir>/<date>/.
    reports_dir: Path = Path("reports")
    # An occurrence missed (scheduler down) still runs if this late; several are coalesced.
    misfire_grace_seconds: int = Field(default=3600, ge=1)
    # Alert when a production figure is this far below the version's test-set figure.
    alert_margin: float = Field(default=0.1, ge=0, le=1)
    alert_min_cases: int = Field(default=10, ge=1)

    _check_crons = field_validator("retrain_cron", "report_cron", "retention_cron")(_check_cron)


class WebTlsSettings(_Section):
    """HTTPS for the web service: a server certificate and its key, and optionally the CAs
    of the client certificates that DICOMweb peers may present.

    With ``client_ca_certificates`` a client certificate is asked for but not required:
    browsers on the console have none, and a peer may use a bearer token instead. One that
    is presented must be signed by those CAs, or the handshake fails.
    """

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    client_ca_certificates: Path | None = None

    @model_validator(mode="after")
    def _files_present(self) -> WebTlsSettings:
        if self.client_ca_certificates is not None:
            if not self.enabled:
                raise ValueError("client_ca_certificates is set but enabled is false; client "
                                 "certificates come only over TLS: enable it or remove the key")
            if not Path(self.client_ca_certificates).is_file():
                raise ValueError(f'client_ca_certificates "{self.client_ca_certificates}" is '
                                 "not a readable file")
        return _require_files(self, ("certificate", "private_key"))


class WebSettings(_Section):
    """The node's web service: health checks, Prometheus metrics and the admin console.

    ``cxr-node serve`` and ``cxr-node web`` listen on ``bind_address:port``; ``cxr-node
    worker`` serves the same health and metrics endpoints on ``worker_port``, so that
    every process of a scaled-out site can be scraped.
    """

    enabled: bool = True
    bind_address: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # `cxr-node worker`: its own port (one per worker process on a host); empty: none.
    worker_port: int | None = Field(default=8081, ge=1, le=65535)
    tls: WebTlsSettings = Field(default_factory=WebTlsSettings)
    # Empty: /metrics is open. Otherwise scrapers send "Authorization: Bearer <token>".
    metrics_token: str | None = None
    # Console accounts: wrong passwords in a row before an account is locked, for how long;
    # and how long a login lasts (the session ends then, or at logout, whichever is first).
    max_failed_logins: int = Field(default=5, ge=1, le=100)
    lockout_seconds: float = Field(default=900.0, ge=1)
    # Failed logins from one address, whatever the names, within the window; past it that
    # address gets 429 until the window has room again (guessing across many names).
    max_failed_logins_per_address: int = Field(default=20, ge=1, le=10_000)
    failed_login_window_seconds: float = Field(default=300.0, ge=1)
    session_hours: float = Field(default=8.0, gt=0, le=720)
    # The largest upload the console takes (a labels file: NIH's box list is about 100 kB,
    # VinDr-CXR's train.csv a few MB); past it, 413 before anything is imported.
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, le=2**31)

    _check_bind = field_validator("bind_address")(_check_ip_address)

    @field_validator("metrics_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is not None and (len(value) < 16 or not value.isprintable()
                                  or value != value.strip() or " " in value):
            raise ValueError("a bearer token is at least 16 printable characters, no spaces")
        return value


_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# As `openssl x509 -fingerprint -sha256` prints a digest: pairs of hex digits and colons.
_SHA256_COLONS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}$")
# A DICOMweb peer's name stands where a DIMSE peer's calling AE title does (audit rows, the
# instance's sender), so it fits the same 16 characters; no spaces, so it reads in a log.
_PEER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,16}$")


def check_dicomweb_peer_name(value: str) -> str:
    """A DICOMweb peer's name, or ``ValueError`` naming what a name may be."""
    if not _PEER_NAME.match(value):
        raise ValueError(f'"{value}" is not a peer name (1-16 of A-Z a-z 0-9 _ . -)')
    return value


class DicomwebPeer(_Section):
    """A DICOMweb client that may store to the node (STOW-RS), known by a bearer token, a
    client certificate, or either.

    Only SHA-256 digests are kept: of the token, and of the certificate's DER (what
    ``openssl x509 -fingerprint -sha256`` prints). A fast hash is enough where a password
    would need a slow one (argon2, as console accounts have): the token is 256 random bits
    from ``cxr-node dicomweb token``, so no guess list exists to try against a leaked
    digest, and a slow hash would cost every request its milliseconds and memory. A
    certificate's digest is no secret: the certificate is admitted only when the TLS
    handshake proved the peer holds its key.
    """

    name: str
    token_sha256: str | None = None
    certificate_sha256: str | None = None

    _check_name = field_validator("name")(check_dicomweb_peer_name)

    @field_validator("token_sha256")
    @classmethod
    def _check_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_HEX.match(value):
            raise ValueError("is not a SHA-256 digest (64 of 0-9 a-f); make a token and its "
                             "digest with `cxr-node dicomweb token NAME`")
        return value

    @field_validator("certificate_sha256")
    @classmethod
    def _check_certificate_digest(cls, value: str | None) -> str | None:
        """64 hex digits; openssl's ``AB:CD:...`` form is taken and written as ``abcd...``."""
        if value is None:
            return None
        if _SHA256_COLONS.match(value.strip()):
            value = value.strip().replace(":", "")
        if not _SHA256_HEX.match(value.lower()):
            raise ValueError("is not a SHA-256 digest (64 hex digits, with or without colons); "
                             "print it with `cxr-node dicomweb certificate NAME CERT.pem`")
        return value.lower()

    @model_validator(mode="after")
    def _known_somehow(self) -> DicomwebPeer:
        if self.token_sha256 is None and self.certificate_sha256 is None:
            raise ValueError(f"peer {self.name} has neither token_sha256 nor "
                             "certificate_sha256; give one of them, or both")
        return self


class DicomwebSettings(_Section):
    """DICOMweb on the web service: who may store (STOW-RS) and the bounds on a request.

    STOW-RS is served by `cxr-node serve` only (on ``web.port``), the process whose ingest
    and completion monitor the DIMSE listener uses too. Each part is bounded by
    ``dicom.max_instance_bytes`` and refused with the free disk below
    ``dicom.min_free_disk_bytes``, as a C-STORE is.
    """

    peers: list[DicomwebPeer] = Field(default_factory=list)
    # Parts (instances) in one request; past it, 413 and the rest is not read.
    max_parts: int = Field(default=1000, ge=1, le=100_000)
    # The header block of one part (Content-Type and the like: a few dozen bytes).
    max_part_header_bytes: int = Field(default=16_384, ge=256, le=1_048_576)
    # A whole request; a Content-Length above it is answered 413 before anything is read.
    max_request_bytes: int = Field(default=32 * 1024**3, ge=1024)
    # Seconds to wait for the next bytes of a request body before giving up on it (408).
    read_timeout_seconds: float = Field(default=60.0, gt=0)

    @field_validator("peers")
    @classmethod
    def _unique_names(cls, peers: list[DicomwebPeer]) -> list[DicomwebPeer]:
        """Unique names and digests: one token or certificate must name one sender."""
        for key in ("token_sha256", "certificate_sha256"):
            digests = [getattr(p, key) for p in peers if getattr(p, key) is not None]
            shared = sorted(p.name for p in peers if digests.count(getattr(p, key)) > 1)
            if shared:
                raise ValueError(f"peers {', '.join(shared)} have the same {key}")
        return _unique_by_name(peers, "peer")


class LoggingSettings(_Section):
    level: str = "INFO"

    @field_validator("level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f'"{value}" is not one of DEBUG, INFO, WARNING, ERROR')
        return upper


class Settings(_Section):
    node: NodeSettings = Field(default_factory=NodeSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    destinations: list[Destination] = Field(default_factory=list)
    sending: SendingSettings = Field(default_factory=SendingSettings)
    labels: LabelSettings = Field(default_factory=LabelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @field_validator("destinations")
    @classmethod
    def _unique_destination_names(cls, destinations: list[Destination]) -> list[Destination]:
        return _unique_by_name(destinations, "destination")

    @model_validator(mode="after")
    def _client_certificates_asked_for(self) -> Settings:
        """A peer known by certificate needs the web service to ask for one."""
        if self.web.tls.client_ca_certificates is None:
            for index, peer in enumerate(self.dicomweb.peers):
                if peer.certificate_sha256 is not None:
                    raise ValueError(
                        f"dicomweb.peers.{index}.certificate_sha256: peer {peer.name} is "
                        "known by a client certificate, but web.tls.client_ca_certificates "
                        "is not set, so the web service never asks for one: set it (the CAs "
                        "that sign the peers' certificates) or remove the key")
        return self

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)

    @property
    def device_uid(self) -> str:
        """The configured device UID, or one derived from the AE title (a 2.25 UUID UID)."""
        if self.node.device_uid:
            return self.node.device_uid
        derived = uuid.uuid5(uuid.NAMESPACE_OID, f"cxr-node/{self.dicom.ae_title}")
        return f"2.25.{derived.int}"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``CXR_NODE_DICOM__PORT=1`` -> ``{"dicom": {"port": "1"}}``; lists and maps as YAML."""
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        value: Any = yaml.safe_load(raw) if raw.lstrip().startswith(("[", "{")) else raw
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: conflicts with another override")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError) -> str:
    """One line per offending key, ``<key>: <problem>``, so one mistake is one line."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against config/example.yaml"
        # A check across sections (Settings' own validators) names its key in the message.
        lines.append(f"{key}: {message}" if key else message)
    return "\n".join(lines)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, on one line: ``line 3, column 7: expected ',' or ']'``."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def load_settings(path: Path | str | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or ``$CXR_NODE_CONFIG``), apply environment overrides, validate.

    Raises
    ------
    ConfigError
        If the file is missing or not a mapping, or any key is unknown or invalid; the
        message names each key.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV_VAR)
    data: dict[str, Any] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f'configuration file "{file}" does not exist')
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: {_yaml_problem(exc)}; fix the YAML syntax") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f'configuration file "{file}" cannot be read ({exc})') from None
        if not isinstance(loaded, dict):
            raise ConfigError(f'configuration file "{file}" must hold a mapping of sections')
        data = loaded
    data = _merge(data, _env_overrides(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
