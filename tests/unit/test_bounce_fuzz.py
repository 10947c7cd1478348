"""The bounce parser never raises: mutated corpus files, arbitrary bytes, hostile shapes.

`bounce.dsn.parse` has a last-resort guard that turns any exception into "not a bounce"; these tests
call the unguarded `_parse` so that a crash the guard would hide still fails here.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bounce import dsn
from bounce.dsn import BounceReport
from tests.conftest import bounce_corpus

_ROOT = bounce_corpus()
CORPUS = _ROOT / "eml" if _ROOT is not None else Path("/nonexistent")
SAMPLES = sorted(CORPUS.glob("*.eml"))[::7] if CORPUS.is_dir() else []
# Without the corpus (a user's fresh clone) the mutations start from small built-in messages.
SEEDS = [p.read_bytes() for p in SAMPLES] or [
    dsn.build_dsn(reporting_mta="mx.example.org", from_addr="MAILER-DAEMON@example.org",
                  to_addr="bounce@example.com", original_headers={"Message-Id": "<a@b>"},
                  recipients=[("x@example.net", "failed", "5.1.1", "550 5.1.1 unknown")],
                  message_id="<dsn@example.org>", human_text="failed"),
    b"From: MAILER-DAEMON@example.org\nSubject: failure notice\n\n<a@example.net>:\n550 no such user\n",
]


def _check(raw: bytes) -> None:
    report = dsn._parse(raw, None)
    assert isinstance(report, BounceReport)
    report.to_dict()
    assert isinstance(dsn.parse(raw), BounceReport)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup", "truncate", "ending"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + draw(st.integers(1, 400))]
        elif op == "insert":
            raw[pos:pos] = draw(st.sampled_from([
                b"\n", b"\r", b"\r\n", b"\n\n", b"--", b"Content-Type: multipart/report; boundary=x\n",
                b"Content-Type: message/delivery-status\n\n", b"Final-Recipient: rfc822; ",
                b"Status: 5.1.1\n", b"=?utf-8?b?", b"\x00", b"\xff\xfe", b"<@>", b"@" * 50,
                b"Content-Transfer-Encoding: base64\n", b"{\"notificationType\":", b"\n--x--\n",
            ]))
        elif op == "dup" and raw:
            end = min(len(raw), pos + draw(st.integers(1, 2000)))
            raw[pos:pos] = raw[pos:end]
        elif op == "truncate":
            del raw[pos:]
        elif op == "ending":
            raw = bytearray(bytes(raw).replace(b"\n", draw(st.sampled_from([b"\r\n", b"\r", b"\n"]))))
    return bytes(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_corpus_files(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4000))
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([
    "From: MAILER-DAEMON@x.example\n", "Subject: Undelivered Mail\n", "Content-Type: multipart/report;"
    " report-type=delivery-status; boundary=b\n", "\n", "--b\n", "--b--\n", "Content-Type: message/"
    "delivery-status\n", "Content-Type: message/rfc822\n", "Content-Type: text/rfc822-headers\n",
    "Final-Recipient: rfc822; a@b.example\n", "Original-Recipient: rfc822;c@d.example\n", "Action: failed\n",
    "Status: 5.1.1\n", "Diagnostic-Code: smtp; 550 5.1.1 <a@b.example>... User unknown\n",
    "  folded continuation\n", "<a@b.example>: host x said: 550 no such user\n", "Message-Id: <m@x>\n",
    "X-Failed-Recipients: a@b.example\n", "Content-Transfer-Encoding: quoted-printable\n", "=\n", "=ZZ\n",
]), max_size=60))
def test_shuffled_report_pieces(pieces: list[str]) -> None:
    _check("".join(pieces).encode())


@pytest.mark.parametrize("raw", [
    # Found by longer fuzzing runs.
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n------ Original message\nContent-Type: multipart/mixed; "
    b"boundary=b\n\n--b\nContent-Type: :\n\nx\n--b--\n",
    b"From: MAILER-DAEMON@x\nSubject: errors\n\nTranscript of session follows\n Out: 220 hi\n In: :\n"
    b" In:  RCPT TO:<a@b.example>\n Out: 550 5.1.1 no\n",
    b"From: no-reply@sns.amazonaws.com\n\n{\"notificationType\":\"Bounce\",\"bounce\":[1]}",
    b"",
    b"\n\n\n",
    b"From: a@b\n\n" + b"a" * 200_000 + b"@" + b"b" * 200_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + (b"x@" * 100_000),
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b"<" + b"a." * 50_000 + b"@b>:\n" + b"550 " * 10_000,
    b"Content-Type: multipart/mixed; boundary=a\n\n" + b"--a\nContent-Type: multipart/mixed; boundary=a\n\n" * 5000,
    b"Content-Type: message/rfc822\n\n" * 5000,
    b"Subject: " + b"=?utf-8?q?" * 20_000 + b"\n\nx",
    b"From: MAILER-DAEMON@x\nSubject: Undelivered\n\n" + b"Final-Recipient: rfc822; a@b.c\nStatus: 5.1.1\n" * 20_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b"domain of sender address " * 20_000,
    b"From: MAILER-DAEMON@x\nTo: " + b"a" * 100_000 + b"@" + b"b" * 100_000 + b"\nSubject: failure notice\n\n"
    b"<x@y.example>: 550 no such user\n",
    b"From: MAILER-DAEMON@x\nSubject: failure\nContent-Type: text/html\n\n" + b"<br<script" * 30_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b"\n" * 200_000 + b"550 x\n",
    b"Content-Type: multipart/mixed\n\n--" + b"a" * 200_000 + b" x\n" + b"-- a\n" * 20_000,
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b"a" * 200_000 + b"@b.c\n",
    b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n"
    + b"".join(b"<a%d@b.example>: 550 unknown\n" % i for i in range(5000)),
])
def test_hostile_shapes_stay_cheap(raw: bytes) -> None:
    start = time.perf_counter()
    _check(raw)
    assert time.perf_counter() - start < 5.0


def test_corpus_files_parse_without_the_guard() -> None:
    for path in sorted(CORPUS.glob("*.eml")) if CORPUS.is_dir() else []:
        dsn._parse(Path(path).read_bytes(), None)
