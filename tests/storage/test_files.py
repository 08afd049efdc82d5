"""The DICOM file store: UIDs as path components, durable placement, oversize and leftovers."""

from __future__ import annotations

import hashlib

import pytest

from storage.files import DicomFileStore, InvalidUID, validate_uid

STUDY, SERIES, SOP = "1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.2.3"
UID_65_CHARS = "1." + "2" * 63


def test_validate_uid_accepts_a_uid():
    assert validate_uid("1.2.840.10008.1.2", "Transfer Syntax UID") == "1.2.840.10008.1.2"


@pytest.mark.parametrize("value", [
    "", None, "../../etc/passwd", "1.2.abc", "1.02.3", UID_65_CHARS, "1..2",
], ids=["empty", "none", "traversal", "letters", "leading-zero", "65-chars", "empty-group"])
def test_validate_uid_rejects(value):
    with pytest.raises(InvalidUID, match="Study Instance UID"):
        validate_uid(value, "Study Instance UID")


def test_relative_path_layout():
    assert DicomFileStore.relative_path(STUDY, SERIES, SOP) == f"dicom/{STUDY}/{SERIES}/{SOP}.dcm"


@pytest.mark.parametrize("position", [0, 1, 2])
def test_relative_path_refuses_hostile_uid(position):
    uids = [STUDY, SERIES, SOP]
    uids[position] = "../../etc/passwd"

    with pytest.raises(InvalidUID):
        DicomFileStore.relative_path(*uids)


@pytest.mark.parametrize("batched", [False, True], ids=["write", "write_all-views"])
def test_place_writes_exact_bytes_and_hash(tmp_path, batched):
    store = DicomFileStore(tmp_path)
    chunks = [b"DICM" * 1000, b"\x00\x01\x02" * 777, b"end"]
    incoming = store.new_incoming(max_bytes=1_000_000)
    if batched:  # as STOW-RS writes: views of the received chunks, several at a time
        incoming.write_all([memoryview(chunk)[:] for chunk in chunks])
    else:
        for chunk in chunks:
            incoming.write(chunk)
    relative = DicomFileStore.relative_path(STUDY, SERIES, SOP)

    target = store.place(incoming, relative)

    content = b"".join(chunks)
    assert target == tmp_path.resolve() / relative
    assert target.read_bytes() == content
    assert incoming.sha256 == hashlib.sha256(content).hexdigest()
    assert list(store.incoming_dir.iterdir()) == []


def test_oversize_file_stops_writing_and_discard_removes_it(tmp_path):
    store = DicomFileStore(tmp_path)
    incoming = store.new_incoming(max_bytes=100)
    for _ in range(5):
        incoming.write(b"x" * 40)

    assert incoming.oversize
    assert incoming.path.stat().st_size <= 100

    incoming.discard()
    assert not incoming.path.exists()


def test_place_replaces_existing_file(tmp_path):
    store = DicomFileStore(tmp_path)
    relative = DicomFileStore.relative_path(STUDY, SERIES, SOP)
    for content in (b"old content", b"new"):
        incoming = store.new_incoming(max_bytes=1000)
        incoming.write(content)
        target = store.place(incoming, relative)

    assert target.read_bytes() == b"new"


def test_remove_stale_incoming(tmp_path):
    store = DicomFileStore(tmp_path)
    for name in ("a.part", "b.part"):
        (store.incoming_dir / name).write_bytes(b"half a file")
    unfinished = store.new_incoming(max_bytes=1000)
    unfinished.close()

    assert store.remove_stale_incoming() == 3
    assert list(store.incoming_dir.iterdir()) == []
