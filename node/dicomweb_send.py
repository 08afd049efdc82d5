"""STOW-RS (PS3.18 10.5): the sender's transport for a ``kind: dicomweb`` destination.

The outbox, its leases, back-off and dead letters are the sender's (node.sender); this
module only turns one study's result files into one ``POST {url}/studies/{study}`` and
the answer into one outcome per SOP Instance UID: ``""`` when stored, otherwise the line
that ``last_error`` shows (HTTP status, and the response's FailureReason when it names
one). The files go as they are on disk, so every retry sends the very same bytes and UIDs.

Plain ``requests`` rather than ``dicomweb-client``'s ``store_instances``: that raises on a
4xx before the Failed SOP Sequence can be read, hides whether the answer was 200 or 202,
retries 503s on its own (under the outbox's own back-off), and re-encodes each dataset.

Every failure is retried with back-off until ``sending.max_age_seconds`` and then becomes a
dead letter, 4xx included, as the C-STORE path does with its refusals (0xA900, 0xC000):
a 401 or 403 is fixed by correcting the token, a 409 or 400 by the archive's admin, and
neither side tells the node when; the dead letter is the permanent outcome, and
``cxr-node transfers retry`` sends it again once someone has fixed the cause.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Sequence
from http import HTTPStatus

import requests
from urllib3.exceptions import NewConnectionError

from config.settings import Destination

MEDIA_TYPE_DICOM = "application/dicom"
MEDIA_TYPE_DICOM_JSON = "application/dicom+json"
# A STOW-RS response lists each instance in a few hundred bytes; more is not an answer.
MAX_RESPONSE_BYTES = 1024 * 1024
# PS3.18 Table 10.5.3-2 and 10.5.3-3 (the attributes), PS3.18 Table I.2-3 (the reasons).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
FAILURE_REASONS = {
    0xA700: "refused: out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
    0x0110: "processing failure",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
}
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
# OpenSSL's place in its source, which tells a person nothing: "(_ssl.c:2427)".
_SSL_SOURCE = re.compile(r"\s*\(_ssl\.c:\d+\)")


def open_session(destination: Destination) -> requests.Session:
    """A session that authenticates and checks certificates as ``destination`` says."""
    session = requests.Session()
    session.headers["User-Agent"] = "cxr-node"
    if destination.token is not None:
        session.headers["Authorization"] = f"Bearer {destination.token}"
    elif destination.username is not None:
        session.auth = (destination.username, destination.password or "")
    session.verify = verify(destination)
    if destination.client_certificate is not None:
        session.cert = (str(destination.client_certificate),
                        str(destination.client_private_key))
    return session


def verify(destination: Destination) -> bool | str:
    """``requests``' verify: the CA file, or whether to check against the system's CAs.

    Pass it with each request too: ``requests`` lets REQUESTS_CA_BUNDLE in the environment
    override a session's CA file (psf/requests#3829), but not a request's.
    """
    return str(destination.ca_file) if destination.ca_file else destination.verify_tls


def multipart_body(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a ``multipart/related; type="application/dicom"`` message."""
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in part for part in parts):  # astronomically rare
        boundary = uuid.uuid4().hex
    delimiter = f"--{boundary}\r\nContent-Type: {MEDIA_TYPE_DICOM}\r\n\r\n".encode()
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return (b"".join(chunks),
            f'multipart/related; type="{MEDIA_TYPE_DICOM}"; boundary={boundary}')


def store_study(session: requests.Session, destination: Destination, study_uid: str,
                instances: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """POST one study's files; {SOP Instance UID: "" when stored, else what went wrong}."""
    uids = [uid for uid, _ in instances]
    body, content_type = multipart_body([data for _, data in instances])
    try:
        response = session.post(f"{destination.url}/studies/{study_uid}", data=body,
                                headers={"Content-Type": content_type,
                                         "Accept": MEDIA_TYPE_DICOM_JSON},
                                timeout=destination.timeout_seconds, allow_redirects=False,
                                verify=verify(destination), stream=True)
        with response:
            answer = _read_bounded(response)
    except requests.RequestException as exc:
        return dict.fromkeys(uids, request_failure(destination, exc))
    referenced, failed = _stow_lists(response, answer)
    status = _status(response)
    outcome: dict[str, str] = {}
    for uid in uids:
        if uid in failed:
            outcome[uid] = f"{destination.where}: {status}, {_failure_reason(failed[uid])}"
        elif 200 <= response.status_code < 300:
            # 200: every instance stored (PS3.18 10.5.3); 202: only those it lists.
            stored = response.status_code == 200 or uid in referenced
            outcome[uid] = "" if stored else (f"{destination.where}: {status}, instance not "
                                              "listed as stored in the STOW-RS response")
        elif 300 <= response.status_code < 400:
            outcome[uid] = (f"{destination.where}: {status}, redirected to "
                            f"{response.headers.get('Location', '(no Location)')}; set url "
                            "to the address the service answers on")
        else:
            detail = _error_text(response, answer)
            outcome[uid] = f"{destination.where}: {status}{f': {detail}' if detail else ''}"
    return outcome


def qido_check(destination: Destination) -> tuple[bool, str]:
    """``GET {url}/studies?limit=1`` (QIDO-RS, PS3.18 10.6): is the service there, and do
    our credentials get in? (ok, one line) for ``cxr-node echo --destination``, which
    sends a C-ECHO to a DICOM destination. A STOW-only service may answer 404 or 405."""
    with open_session(destination) as session:
        try:
            response = session.get(f"{destination.url}/studies", params={"limit": "1"},
                                   headers={"Accept": MEDIA_TYPE_DICOM_JSON},
                                   timeout=destination.timeout_seconds, allow_redirects=False,
                                   verify=verify(destination), stream=True)
            with response:
                answer = _read_bounded(response)
        except requests.RequestException as exc:
            return False, request_failure(destination, exc, "QIDO-RS")
    ok = response.status_code in (HTTPStatus.OK, HTTPStatus.NO_CONTENT)
    detail = "" if ok else _error_text(response, answer)
    return ok, f"QIDO-RS to {destination.where}: {_status(response)}" + (
        f": {detail}" if detail else "")


def request_failure(destination: Destination, exc: requests.RequestException,
                    service: str = "STOW-RS") -> str:
    """One line for a request that got no HTTP answer: what a person checks next."""
    where = destination.where
    if isinstance(exc, requests.exceptions.SSLError):
        return f"{where}: TLS failed ({_reason(exc)}); {_tls_advice(destination, exc)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"cannot connect to {where} (no answer within {destination.timeout_seconds:g} s)"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{where}: no {service} response within {destination.timeout_seconds:g} s"
    if any(isinstance(c, NewConnectionError) for c in _causes(exc)):
        return f"cannot connect to {where} ({_reason(exc)})"
    if isinstance(exc, requests.exceptions.ConnectionError):
        lost = f"{where}: connection lost before the answer ({_reason(exc)})"
        if destination.url.startswith("https:"):
            # In TLS 1.3 the client's side of the handshake ends first: a server that then
            # refuses our certificate (or its absence) may just close the connection.
            return f"{lost}; a server that refuses a client certificate closes so too: " + (
                _client_certificate_advice(destination))
        return lost
    return f"{where}: {type(exc).__name__} ({_reason(exc)})"


def _tls_advice(destination: Destination, exc: requests.exceptions.SSLError) -> str:
    """What to check after a failed handshake: our check of the server's certificate, or
    the server's of ours.

    A server that refuses our client certificate (or its absence) sends an alert or, in
    TLS 1.3, where our side of the handshake is already over, may just close: both are
    taken as its refusal. A key that does not match its certificate fails before any
    connection (preflight checks the pair at start).
    """
    causes = _causes(exc)
    if any(isinstance(c, ssl.SSLCertVerificationError) for c in causes):
        return "check verify_tls and ca_file against the server's certificate"
    text = " ".join(str(c) for c in causes).lower()
    if "alert" in text or any(isinstance(c, ssl.SSLEOFError) for c in causes):
        return f"the server ended the handshake: {_client_certificate_advice(destination)}"
    return ("check verify_tls and ca_file against the server's certificate, and "
            "client_certificate if the server asks for one")


def _client_certificate_advice(destination: Destination) -> str:
    if destination.client_certificate is None:
        return ("if it requires a client certificate, set client_certificate and "
                "client_private_key")
    return "check that it accepts client_certificate (signed by a CA it trusts, not expired)"


def _status(response: requests.Response) -> str:
    """``HTTP 409 Conflict``; the standard phrase where the server sent none (HTTP/2-like)."""
    phrase = response.reason
    if not phrase:
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:
            phrase = ""
    return f"HTTP {response.status_code} {phrase}".rstrip()


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: requests -> urllib3 (``reason``, ``args``) -> ssl, socket."""
    found: list[BaseException] = []
    pending = [exc]
    while pending and len(found) < 20:
        current = pending.pop(0)
        if current in found:
            continue
        found.append(current)
        pending += [c for c in (getattr(current, "reason", None), current.__cause__,
                                current.__context__, *current.args)
                    if isinstance(c, BaseException)]
    return found


def _reason(exc: Exception) -> str:
    """The words of the innermost cause (``connection refused``, ``certificate verify
    failed: self-signed certificate``), not urllib3's whole chain of wrappers."""
    for cause in reversed(_causes(exc)):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError) and cause.reason:
            return str(cause.reason).lower().replace("_", " ")
        if isinstance(cause, OSError) and cause.strerror:
            return _SSL_SOURCE.sub("", cause.strerror).lower()
    text = str(exc)
    found = _ERRNO.search(text)
    if found:
        return found.group(1).strip().lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read_bounded(response: requests.Response) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)[:MAX_RESPONSE_BYTES]


def _json(response: requests.Response, answer: bytes) -> object:
    """The answer as JSON when it is JSON; None otherwise.

    A body without a Content-Type is tried too: Orthanc's DICOMweb plugin (1.7) sends its
    409 and 400 answers, Failed SOP Sequence and all, without one.
    """
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media_type not in (MEDIA_TYPE_DICOM_JSON, "application/json", "") or not answer:
        return None
    try:
        return json.loads(answer)
    except ValueError:  # a truncated or broken body is no list of instances
        return None


def _items(dataset: dict, tag: str) -> list[dict]:
    element = dataset.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _first(item: dict, tag: str) -> object:
    element = item.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return value[0] if isinstance(value, list) and value else None


def _stow_lists(response: requests.Response,
                answer: bytes) -> tuple[set[str], dict[str, int | None]]:
    """(UIDs referenced as stored, {UID: FailureReason}) from a PS3.18 STOW-RS response.

    An item of the Referenced SOP Sequence may carry a Warning Reason (coerced or
    discarded attributes): the instance was stored, as with a C-STORE warning status.
    """
    dataset = _json(response, answer)
    if not isinstance(dataset, dict):
        return set(), {}
    referenced = {str(uid) for item in _items(dataset, REFERENCED_SOP_SEQUENCE)
                  if (uid := _first(item, REFERENCED_SOP_INSTANCE_UID))}
    failed: dict[str, int | None] = {}
    for item in _items(dataset, FAILED_SOP_SEQUENCE):
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if uid:
            reason = _first(item, FAILURE_REASON)
            failed[str(uid)] = reason if isinstance(reason, int) else None
    return referenced - set(failed), failed


def _failure_reason(code: int | None) -> str:
    if code is None:
        return "listed as failed (no FailureReason)"
    name = FAILURE_REASONS.get(code) or FAILURE_REASONS.get(code & 0xFF00) \
        or ("cannot understand" if code & 0xF000 == 0xC000 else "")
    return f"FailureReason 0x{code:04X}{f' ({name})' if name else ''}"


def _error_text(response: requests.Response, answer: bytes) -> str:
    """A server's own words about an error, when it gives them in a short, readable form."""
    body = _json(response, answer)
    if isinstance(body, dict):
        for key in ("Message", "message", "error", "Details", "HttpError"):
            if isinstance(body.get(key), str) and body[key].strip():
                return body[key].strip().splitlines()[0][:200]
        return ""
    if response.headers.get("Content-Type", "").startswith("text/plain"):
        text = answer.decode("utf-8", "replace").strip()
        return text.splitlines()[0][:200] if text else ""
    return ""
