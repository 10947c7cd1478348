"""The pipelined IMAP reader: responses cut from a byte stream however it arrives, FETCH items read from them."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.intake.imap_pipeline import ImapError, ResponseReader, fetch_item

STREAM = (b"* 1 FETCH (UID 10 RFC822.SIZE 5 BODY[] {5}\r\nab\r\nc)\r\n"
          b"* 2 EXISTS\r\n"
          b"* 3 FETCH (BODY[] {3}\r\nxyz UID 12 RFC822.SIZE 3 BODY[HEADER] {2}\r\nhh)\r\n"
          b"* 4 FETCH (UID 13 RFC822.SIZE 0 BODY[] {0}\r\n)\r\n"
          b"A7 OK Fetch completed.\r\n"
          b"* 5 FETCH (FLAGS (\\Seen) UID 14)\r\n"
          b"A8 NO [SERVERBUG] oops\r\n")


def read_all(chunks: list[bytes]) -> list[tuple[list[bytes], list[bytes]]]:
    reader = ResponseReader(max_literal=1000)
    out = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    assert reader.at_boundary and reader.rest == b""
    return out


def test_responses_and_their_literals() -> None:
    responses = read_all([STREAM])
    assert [texts[0][:9] for texts, _ in responses] == [b"* 1 FETCH", b"* 2 EXIST", b"* 3 FETCH", b"* 4 FETCH",
                                                        b"A7 OK Fet", b"* 5 FETCH", b"A8 NO [SE"]
    assert responses[0] == ([b"* 1 FETCH (UID 10 RFC822.SIZE 5 BODY[] ", b")"], [b"ab\r\nc"])
    assert responses[2][1] == [b"xyz", b"hh"]
    assert responses[3][1] == [b""]


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_stream_reads_the_same(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    assert read_all([STREAM[a:b] for a, b in itertools.pairwise(points)]) == read_all([STREAM])


def test_fetch_items_uid_anywhere_body_after_its_name() -> None:
    items = [fetch_item(texts, literals) for texts, literals in read_all([STREAM]) if texts[0].startswith(b"* ")
             and b"FETCH" in texts[0]]
    # * 3: the body is the literal after BODY[] even with BODY[HEADER] after it; * 5: no body asked for.
    assert items == [(10, 5, b"ab\r\nc"), (12, 3, b"xyz"), (13, 0, b""), (14, None, None)]


def test_the_common_shape_and_the_general_reading_agree() -> None:
    common = read_all([b"* 9 FETCH (UID 77 RFC822.SIZE 4 BODY[] {4}\r\nbody)\r\n"])[0]
    reordered = read_all([b"* 9 FETCH (RFC822.SIZE 4 UID 77 BODY[] {4}\r\nbody)\r\n"])[0]
    assert fetch_item(*common) == fetch_item(*reordered) == (77, 4, b"body")


def test_a_literal_over_the_limit_or_an_endless_line_is_refused() -> None:
    with pytest.raises(ImapError, match="literal of 1001 bytes"):
        ResponseReader(max_literal=1000).feed(b"* 1 FETCH (UID 1 BODY[] {1001}\r\n")
    reader = ResponseReader(max_literal=1000)
    with pytest.raises(ImapError, match="response line over"):
        for _ in range(20):
            reader.feed(b"x" * 65536)
