"""The STOW-RS body parser: the same parts however the bytes are cut, and every bound held."""

from __future__ import annotations

import pytest

from node.web.dicomweb.multipart import (
    MultipartError,
    MultipartLimit,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    check_boundary,
    media_type,
)

BOUNDARY = b"b0und4ry"
# Parts whose bytes hold near-misses of the delimiter: a CRLF, "--", the boundary less
# its last byte, the boundary without its CRLF, and a part that ends in CR.
PARTS = [
    b"\x00DICM\r\n--b0und4r\r\n--b0und4\r\nend",
    b"",
    b"--b0und4ry is only a delimiter after CRLF\r",
    bytes(range(256)) * 3,
]


def body(parts: list[bytes], *, preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble + (b"\r\n" if preamble else b"")
    for index, part in enumerate(parts):
        out += b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n"
        out += f"X-Part: {index}\r\n\r\n".encode() + part + b"\r\n"
    return out + b"--" + BOUNDARY + b"--" + epilogue


def parse(chunks: list[bytes], **limits: int) -> list[tuple[dict[str, str], bytes]]:
    """The parts (headers, bytes) the parser reports, fed ``chunks`` one by one."""
    parser = MultipartParser(BOUNDARY, limits.get("max_header_bytes", 1024),
                             limits.get("max_parts", 100))
    parts: list[tuple[dict[str, str], bytes]] = []
    open_part = None
    for chunk in chunks:
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                assert open_part is None
                open_part = (event.headers, bytearray())
            elif isinstance(event, PartData):
                assert event.data, "no empty data events"
                open_part[1].extend(event.data)
            else:
                assert isinstance(event, PartEnd)
                parts.append((open_part[0], bytes(open_part[1])))
                open_part = None
    parser.close()
    return parts


def test_every_split_into_two_chunks_gives_the_same_parts():
    whole = body(PARTS, preamble=b"ignore me", epilogue=b"\r\nand me")

    for cut in range(len(whole) + 1):
        parts = parse([whole[:cut], whole[cut:]])
        assert [data for _, data in parts] == PARTS, f"cut at {cut}"
    assert [headers for headers, _ in parts] == [
        {"content-type": "application/dicom", "x-part": str(i)} for i in range(len(PARTS))]


def test_one_byte_at_a_time_gives_the_same_parts():
    whole = body(PARTS)

    parts = parse([whole[i:i + 1] for i in range(len(whole))])

    assert [data for _, data in parts] == PARTS


def test_every_chunk_size_gives_the_same_parts():
    # Fixed-size chunks end at every offset of every near-miss, so whatever the parser
    # holds back at a chunk's end (the start of a delimiter, perhaps) is joined right.
    whole = body(PARTS, preamble=b"ignore me", epilogue=b"\r\nand me")

    for size in range(1, len(whole) + 1):
        parts = parse([whole[i:i + size] for i in range(0, len(whole), size)])
        assert [data for _, data in parts] == PARTS, f"chunks of {size} bytes"


def test_dicomweb_client_layout_parses():
    # dicomweb-client writes CRLF before the first delimiter and no CRLF after the last.
    whole = b"".join(b"\r\n--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + p
                     for p in PARTS) + b"\r\n--" + BOUNDARY + b"--"

    assert [data for _, data in parse([whole])] == PARTS


def test_a_part_without_headers_and_padding_after_a_boundary():
    whole = (b"--" + BOUNDARY + b"  \t\r\n\r\nno headers\r\n--" + BOUNDARY + b"--\r\n")

    assert parse([whole]) == [({}, b"no headers")]


def test_body_data_is_released_as_it_arrives_not_held_to_the_part_end():
    parser = MultipartParser(BOUNDARY, 1024, 10)
    parser.feed(b"--" + BOUNDARY + b"\r\n\r\n")

    events = parser.feed(b"x" * 100_000)

    held_back = 100_000 - sum(len(e.data) for e in events if isinstance(e, PartData))
    assert held_back < len(b"\r\n--" + BOUNDARY)


def test_body_bytes_are_views_of_the_chunk_and_only_a_delimiter_start_is_held_back():
    # The STOW-RS throughput depends on it: a part's bytes go to disk without a copy.
    parser = MultipartParser(BOUNDARY, 1024, 10)
    parser.feed(b"--" + BOUNDARY + b"\r\n\r\n")
    chunk = b"x" * 100_000

    [event] = parser.feed(chunk)

    assert event.data.obj is chunk and len(event.data) == len(chunk)
    assert event.data.readonly
    # A chunk that ends in what may begin the delimiter keeps those bytes back...
    [event] = parser.feed(b"y" * 10 + b"\r\n--b0un")
    assert bytes(event.data) == b"y" * 10
    # ...and they are the delimiter when the next chunk completes it, or data when not.
    assert isinstance(parser.feed(b"d4ry\r\n\r\n")[0], PartEnd)
    assert bytes(parser.feed(b"\r\n--b0unX")[0].data) == b"\r\n--b0unX"


@pytest.mark.parametrize(("whole", "reason"), [
    (body([b"abc"])[:-4], "before the closing boundary"),
    (b"no delimiter at all" * 200, "no boundary delimiter"),
    (b"--" + BOUNDARY + b"junk\r\n\r\nx\r\n--" + BOUNDARY + b"--", "followed by text"),
    (b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--",
     "not \"Name: value\""),
    (b"--" + BOUNDARY + b"\r\nX: " + b"h" * 2000 + b"\r\n\r\nx", "longer than 1024 bytes"),
    (b"", "no boundary delimiter line"),
])
def test_a_broken_body_is_refused_with_a_reason(whole, reason):
    with pytest.raises(MultipartError, match=reason):
        parse([whole])


def test_more_parts_than_the_bound_is_a_limit_not_a_syntax_error():
    with pytest.raises(MultipartLimit, match="more than 3 parts"):
        parse([body([b"a", b"b", b"c", b"d"])], max_parts=3)
    assert len(parse([body([b"a", b"b", b"c"])], max_parts=3)) == 3


def test_content_type_parameters_are_read_as_http_reads_them():
    kind, params = media_type('Multipart/Related; type="application/dicom"; '
                              'boundary="a b:c"; start="<1@x>"')

    assert kind == "multipart/related"
    assert params == {"type": "application/dicom", "boundary": "a b:c", "start": "<1@x>"}
    assert media_type("application/dicom; transfer-syntax=1.2.840.10008.1.2.1")[0] == \
        "application/dicom"
    assert media_type("not a media type") == ("", {})
    assert media_type(None) == ("", {})


def test_boundaries_are_checked_against_rfc_2046():
    assert check_boundary("0f3cf5c0-70e0-41ef") == b"0f3cf5c0-70e0-41ef"
    for bad in (None, "", "x" * 71, "grüße"):
        with pytest.raises(MultipartError):
            check_boundary(bad)
