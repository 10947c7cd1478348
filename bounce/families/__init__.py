"""Detectors for the bounces that are not (or not only) RFC 3464 reports, one per family.

A detector recognises its family by structure (an introduction sentence, a header, a JSON document,
a transcript) and returns the failed recipients it read, or None. `detect` runs them in order and
falls back on the general reader (`generic`). Each detector names the family as bounce corpora name
the engine that wrote it (`qmail`, `exim`, `amazonses` …), so that a scorer can switch the detectors of
one family off (`disabled`) and see how the general rules alone read that family's bounces.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from bounce.families import amazonses, exchange, intro, lists, localparts, sendmail, transcript
from bounce.families.generic import read_generic
from bounce.mail import Finding, Mail

Reader = Callable[[Mail], "list[Finding] | None"]
GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class Detector:
    family: str
    read: Reader
    # True when the structure alone proves a notice (a JSON document, a list manager's header, an SMTP
    # transcript); the others also need the mail to look like a bounce (bounce.notices).
    self_evident: bool = False


DETECTORS: tuple[Detector, ...] = (
    Detector("amazonses", amazonses.read_ses_json, self_evident=True),
    Detector("googlegroups", lists.read_google_groups, self_evident=True),
    Detector("postfix", transcript.read_smtp_transcript, self_evident=True),
    Detector("fml", lists.read_list_refusal, self_evident=True),
    Detector("sendmail", sendmail.read_sendmail),
    Detector("exchange2003", exchange.read_exchange),
    Detector("groupwise", localparts.read_groupwise),
    Detector("compuserve", localparts.read_receiver_not_found),
    Detector("aol", localparts.read_not_accepting),
    *(Detector(i.family, intro.reader(i.family)) for i in intro.INTROS),
)
FAMILIES = frozenset(d.family for d in DETECTORS)


def detect(mail: Mail, disabled: Collection[str] = (), signs: int = 2) -> tuple[str, list[Finding]]:
    """(family, findings) from the first detector that reads the mail, else the general reader.
    `signs` (bounce.notices.bounce_signs) says which may: 0 only the self-evident detectors, 1 every
    family detector, 2 the general reader too."""
    for detector in DETECTORS:
        if detector.family in disabled or not (signs or detector.self_evident):
            continue
        found = detector.read(mail)
        if found:
            return detector.family, found
    return GENERIC, read_generic(mail) if signs >= 2 else []
