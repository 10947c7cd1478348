"""Each family detector on a synthetic notice written from its format's structure (no corpus file), and
ordinary mail that must not be taken for a bounce.

The samples in bounce_samples/ were written for these tests from the formats (the introduction sentence
or header that names the family, the recipient block, the reply), with example.* addresses. Each test
checks the family that read the notice, the recipients, and that the kind is safe: hard only for a
permanent dead address, a delay warning never hard.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bounce import families
from bounce.dsn import BounceReport, parse
from bounce.mail import build_mail
from bounce.message import parse_message

SAMPLES = Path(__file__).parent / "bounce_samples"

# sample: (family, [(address, action, status, reason, kind), ...])
EXPECTED: dict[str, tuple[str, list[tuple[str, str, str, str, str]]]] = {
    "aol": ("aol", [("jdoe@aol.example", "failed", "5.0.910", "filtered", "policy")]),
    "biglobe": ("generic", [("jdoe@isp.example.jp", "failed", "5.0.922", "mailboxfull", "soft")]),
    "einsundeins": ("exim", [("jdoe@example.de", "failed", "5.0.934", "mesgtoobig", "policy")]),
    "mailmarshal": ("generic", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "sentence": ("generic", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "no_recipient": ("generic", [("jdoe@example.net", "failed", "5.0.922", "mailboxfull", "soft")]),
    "compuserve": ("compuserve", [("jdoe@compuserve.example", "failed", "5.0.911", "userunknown", "hard")]),
    "courier": ("courier", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "domino": ("domino", [("jdoe@corp.example.net", "failed", "5.0.911", "userunknown", "hard")]),
    "ex2003": ("exchange2003", [("jdoe@corp.example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "exim": ("exim", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard"),
                      ("full@example.net", "failed", "5.2.2", "mailboxfull", "soft")]),
    "exim_warn": ("exim", [("jdoe@example.net", "delayed", "4.1.1", "userunknown", "soft")]),
    "gmail": ("gmail", [("jdoe@example.net", "failed", "5.2.1", "suspend", "soft")]),
    "gmail_delay": ("gmail", [("jdoe@example.net", "delayed", "4.0.947", "expired", "soft")]),
    "groupwise": ("groupwise", [("jdoe@example.net", "failed", "5.0.911", "userunknown", "hard")]),
    "imail_full": ("imailserver", [("jdoe@mail.example.net", "failed", "5.0.922", "mailboxfull", "soft")]),
    "ims": ("exchange2003", [("jdoe@corp.example.net", "failed", "5.0.911", "userunknown", "hard")]),
    "mailenable": ("generic", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "opensmtpd": ("opensmtpd", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "postfix_delay": ("postfix", [("jdoe@example.net", "delayed", "4.1.1", "userunknown", "soft")]),
    "postfix_plain": ("postfix", [("jdoe@sina.example", "failed", "5.1.1", "userunknown", "hard")]),
    "qmail": ("qmail", [("jdoe@example.net", "failed", "5.1.1", "userunknown", "hard")]),
    "sendmail_old": ("sendmail", [("jdoe@example.net", "failed", "5.0.911", "userunknown", "hard")]),
    "sendmail_warn": ("sendmail", [("jdoe@example.net", "delayed", "4.0.947", "expired", "soft")]),
    "smtp32": ("imailserver", [("jdoe@mail.example.net", "failed", "5.0.911", "userunknown", "hard")]),
    "windows": ("windows", [("jdoe@example.net", "failed", "5.0.901", "onhold", "soft")]),
    "yahoo_old": ("yahoo", [("jdoe@yahoo.example", "failed", "5.0.921", "suspend", "soft")]),
}


def _read(folder: str, name: str) -> BounceReport:
    return parse((SAMPLES / folder / f"{name}.eml").read_bytes())


def test_every_sample_has_an_expectation() -> None:
    assert {p.stem for p in (SAMPLES / "families").glob("*.eml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_family_sample(name: str) -> None:
    family, recipients = EXPECTED[name]
    report = _read("families", name)
    assert report.is_bounce
    assert report.family == family
    assert [(r.address, r.action, r.status, r.reason, r.kind) for r in report.recipients] == recipients


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_crlf_reads_the_same(name: str) -> None:
    raw = (SAMPLES / "families" / f"{name}.eml").read_bytes()
    assert parse(raw.replace(b"\n", b"\r\n")).to_dict() == parse(raw).to_dict()


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "delay" in n or "warn" in n))
def test_delay_warnings_are_never_hard(name: str) -> None:
    for r in _read("families", name).recipients:
        assert r.action == "delayed" and not r.hard and not r.status.startswith("5")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_without_its_detector_the_general_reader_still_finds_the_recipients(name: str) -> None:
    """Leave-one-family-out on the samples: what the general rules alone make of each family."""
    family, recipients = EXPECTED[name]
    raw = (SAMPLES / "families" / f"{name}.eml").read_bytes()
    report = parse(raw, disabled={family})
    if family in ("groupwise", "compuserve", "aol"):  # no domain in the notice: only the detector knows
        return
    assert [r.address for r in report.recipients] == [r[0] for r in recipients]
    assert not any(r.hard for r in report.recipients if "delay" in name or "warn" in name)


@pytest.mark.parametrize("path", sorted((SAMPLES / "not_bounces").glob("*.eml")), ids=lambda p: p.stem)
def test_ordinary_mail_and_auto_replies_are_not_bounces(path: Path) -> None:
    report = parse(path.read_bytes())
    assert not report.is_bounce and not report.is_feedback
    assert not any(r.hard for r in report.recipients)
    if path.stem.startswith("ooo"):
        assert report.is_auto_reply


def test_a_detector_names_its_family_and_can_be_switched_off() -> None:
    mail = build_mail(parse_message((SAMPLES / "families" / "qmail.eml").read_bytes()))
    assert families.detect(mail)[0] == "qmail"
    assert families.detect(mail, disabled={"qmail"})[0] == families.GENERIC
    assert families.detect(mail, signs=0) == (families.GENERIC, [])
