"""`mailgw bounce parse` and `mailgw bounce score`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bounce.dsn import build_dsn
from gateway.cli import main


def _write_dsn(path: Path, rcpt: str, status: str, diag: str) -> None:
    path.write_bytes(build_dsn(
        reporting_mta="mx.example.org", from_addr="MAILER-DAEMON@mx.example.org", to_addr="bounce@example.com",
        original_headers={"Message-Id": f"<{path.stem}@example.com>"},
        recipients=[(rcpt, "failed", status, diag)], message_id=f"<dsn-{path.stem}@mx>",
        human_text="undeliverable"))


def test_parse_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eml = tmp_path / "one.eml"
    _write_dsn(eml, "gone@example.net", "5.1.1", "550 5.1.1 <gone@example.net>... User unknown")
    assert main(["bounce", "parse", str(eml), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["is_bounce"] is True and out["original_message_id"] == "<one@example.com>"
    assert out["recipients"] == [{"address": "gone@example.net", "action": "failed", "status": "5.1.1",
                                  "reply_code": "550", "reason": "userunknown", "hard": True}]


def test_parse_summary_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eml = tmp_path / "two.eml"
    _write_dsn(eml, "full@example.net", "5.2.2", "552 5.2.2 Mailbox full")
    assert main(["bounce", "parse", str(eml)]) == 0
    out = capsys.readouterr().out
    assert "bounce" in out and "full@example.net" in out and "mailboxfull" in out and "(soft)" in out
    assert main(["bounce", "parse", str(tmp_path / "missing.eml")]) == 66
    assert main(["bounce"]) == 64


def test_score_a_small_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_dsn(tmp_path / "a.eml", "gone@example.net", "5.1.1", "550 5.1.1 User unknown")
    _write_dsn(tmp_path / "b.eml", "full@example.net", "5.2.2", "552 5.2.2 Mailbox full")
    (tmp_path / "c.eml").write_bytes(b"From: a@example.org\nSubject: hello\n\nhi\n")
    answers = [
        {"file": "a.eml", "index": 1, "status": "5.1.1", "reply_code": "550", "reason": "userunknown",
         "hard_bounce": True, "feedback_type": ""},
        {"file": "b.eml", "index": 1, "status": "5.2.2", "reply_code": "552", "reason": "mailboxfull",
         "hard_bounce": False, "feedback_type": ""},
        {"file": "c.eml", "index": 0, "status": "", "reply_code": "", "reason": "not-a-bounce",
         "hard_bounce": False, "feedback_type": ""},
    ]
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    assert main(["bounce", "score", str(tmp_path), "--misses", "--reasons"]) == 0
    out = capsys.readouterr().out
    assert "bounce detected" in out and "100.0%" in out

    answers[1]["reason"] = "userunknown"
    answers[1]["status"] = "5.1.1"
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    assert main(["bounce", "score", str(tmp_path)]) == 1
    assert "BELOW FLOOR" in capsys.readouterr().err


def test_score_needs_an_answer_key(tmp_path: Path) -> None:
    assert main(["bounce", "score", str(tmp_path)]) == 66
    (tmp_path / "answers.json").write_text("{not json")
    assert main(["bounce", "score", str(tmp_path)]) == 65


def test_score_per_family_and_leave_one_family_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_dsn(tmp_path / "lhost-exampled-01.eml", "gone@example.net", "5.1.1", "550 5.1.1 User unknown")
    (tmp_path / "lhost-qmail-01.eml").write_bytes(
        b"From: MAILER-DAEMON@mx.example.net\nTo: sales@example.com\nSubject: failure notice\n\n"
        b"Hi. This is the qmail-send program at mx.example.net.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n\n"
        b"<full@example.net>:\n552 5.2.2 Mailbox full\n")
    answers = [
        {"file": "lhost-exampled-01.eml", "index": 1, "status": "5.1.1", "reply_code": "550",
         "reason": "userunknown", "hard_bounce": True, "feedback_type": ""},
        {"file": "lhost-qmail-01.eml", "index": 1, "status": "5.2.2", "reply_code": "552",
         "reason": "mailboxfull", "hard_bounce": False, "feedback_type": ""},
    ]
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    assert main(["bounce", "score", str(tmp_path), "--by-family", "--lofo"]) == 0
    out = capsys.readouterr().out
    assert "leave one family out" in out and "lhost-qmail" in out and "lhost-exampled" in out
    main(["bounce", "score", str(tmp_path), "--split", "held"])
    assert "split: held" in capsys.readouterr().out


def test_family_names_from_corpus_file_names() -> None:
    from bounce.scorecard import disabled_for, engine_of, family_of

    assert family_of("lhost-postfix-01.eml") == "lhost-postfix"
    assert family_of("rfc3464-07.eml") == "rfc3464"
    assert engine_of("rhost-franceptt") == "franceptt"
    assert disabled_for("lhost-notes") == {"notes", "domino"}
