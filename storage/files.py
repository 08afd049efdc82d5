"""The DICOM file store: write-ahead to a temporary file, fsync, rename, fsync the directory.

Received bytes stream into ``<data_dir>/incoming/`` as they arrive, are hashed on the
way, and are pushed to the disk in the background (``sync_file_range``) so that the
final ``fdatasync`` before the success status has little left to flush. Only then is the
file renamed to ``<data_dir>/dicom/<study>/<series>/<sop>.dcm``. UIDs are validated
before they become path components, so a hostile UID cannot escape the store.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

# PS3.5 9.1: digit groups without leading zeros separated by dots, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
INCOMING_SUFFIX = ".part"
# Ask the kernel to start writing back after this many new bytes.
WRITEBACK_CHUNK_BYTES = 2 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


class InvalidUID(ValueError):
    """A UID that is empty, too long or not digits and dots."""


def validate_uid(value: object, name: str) -> str:
    """Return ``value`` as a clean UID string or raise :class:`InvalidUID` naming ``name``."""
    if value is None or str(value).strip("\0 ") == "":
        raise InvalidUID(f"{name} is missing")
    uid = str(value).strip("\0 ")
    if len(uid) > 64 or not _UID.match(uid):
        raise InvalidUID(f'{name} "{uid[:80]}" is not a valid UID (digits and dots, at most 64)')
    return uid


def _load_sync_file_range():  # noqa: ANN202 - a ctypes function or None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IncomingFile:
    """A file being received: written unbuffered, hashed, and written back as it grows.

    Bytes beyond ``max_bytes`` are counted but not written, so an oversized instance
    costs no disk; :attr:`oversize` tells the receiver to refuse it.
    """

    def __init__(self, directory: Path, max_bytes: int) -> None:
        fd, name = tempfile.mkstemp(dir=directory, suffix=INCOMING_SUFFIX)
        self.fd: int | None = fd
        self.path = Path(name)
        self.max_bytes = max_bytes
        self.size = 0
        self._digest = hashlib.sha256()
        self._written_back = 0

    @property
    def oversize(self) -> bool:
        return self.size > self.max_bytes

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, data: bytes | memoryview) -> None:
        if self.fd is None:
            raise ValueError(f'"{self.path}" is already closed')
        self.size += len(data)
        if self.oversize:
            return
        self._digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        if _sync_file_range is not None and self.size - self._written_back >= WRITEBACK_CHUNK_BYTES:
            _sync_file_range(self.fd, self._written_back, self.size - self._written_back,
                             _SYNC_FILE_RANGE_WRITE)
            self._written_back = self.size

    def write_all(self, buffers: Iterable[bytes | memoryview]) -> None:
        """:meth:`write` each buffer in turn (received chunks, written without joining them)."""
        for data in buffers:
            self.write(data)

    def make_durable(self) -> None:
        """Flush every written byte to stable storage and close the descriptor."""
        if self.fd is None:
            raise ValueError(f'"{self.path}" is already closed')
        os.fdatasync(self.fd)
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        """Close and delete: nothing half-written is left behind."""
        self.close()
        self.path.unlink(missing_ok=True)


class DicomFileStore:
    """Files under ``data_dir``: ``incoming/`` for transfers in flight, ``dicom/`` when stored."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.incoming_dir = self.data_dir / "incoming"
        self.dicom_dir = self.data_dir / "dicom"
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.dicom_dir.mkdir(parents=True, exist_ok=True)

    def remove_stale_incoming(self) -> int:
        """Delete transfers a previous process left unfinished (it died mid-transfer)."""
        stale = list(self.incoming_dir.glob(f"*{INCOMING_SUFFIX}"))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def new_incoming(self, max_bytes: int) -> IncomingFile:
        return IncomingFile(self.incoming_dir, max_bytes)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.data_dir).free

    @staticmethod
    def relative_path(study_uid: str, series_uid: str, sop_instance_uid: str,
                      root: str = "dicom") -> str:
        """``<root>/<study>/<series>/<sop>.dcm`` after each UID is validated.

        ``dicom`` holds what was received, ``results`` the objects this node wrote (kept, so
        a retry sends the very same object).
        """
        parts = (
            validate_uid(study_uid, "Study Instance UID"),
            validate_uid(series_uid, "Series Instance UID"),
            validate_uid(sop_instance_uid, "SOP Instance UID"),
        )
        return f"{root}/{parts[0]}/{parts[1]}/{parts[2]}.dcm"

    def write_bytes(self, data: bytes, relative_path: str) -> Path:
        """Store ``data`` durably under ``relative_path``, as crash-safe as received files."""
        incoming = self.new_incoming(max_bytes=len(data))
        try:
            incoming.write(data)
            return self.place(incoming, relative_path)
        except BaseException:
            incoming.discard()
            raise

    def absolute(self, relative_path: str) -> Path:
        return self.data_dir / relative_path

    def place(self, incoming: IncomingFile, relative_path: str) -> Path:
        """Make ``incoming`` durable under ``relative_path``, replacing any older copy.

        Order matters for crash safety: data fsynced, new directories fsynced into their
        parents, rename, then the target directory fsynced so the rename itself survives.
        """
        target = self.data_dir / relative_path
        incoming.make_durable()
        self._make_directories(target.parent)
        os.replace(incoming.path, target)
        fsync_directory(target.parent)
        return target

    def _make_directories(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
            fsync_directory(path.parent)
