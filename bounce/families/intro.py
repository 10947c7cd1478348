"""Families known by their introduction sentence, read by the general address-then-reason reader.

Each MTA opens its notice with its own sentence ("This is the qmail-send program at …", "This message
was created automatically by mail delivery software." …) and then lists the recipients in the common
structure `bounce.families.generic` reads. Knowing the family names the report, starts the reading at
the sentence (the preamble above it says nothing about recipients) and tells a delay warning from a
failure: a family's warning sentence ("has not yet been delivered … after more than 24 hours", "THIS IS
A WARNING ONLY") makes every recipient `delayed`, never hard.

The sentences are the MTAs' fixed texts (from their sources and documentation), not a sample's wording.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from bounce.families.generic import read_generic
from bounce.mail import Finding, Mail


@dataclass(frozen=True, slots=True)
class Intro:
    family: str
    failure: re.Pattern[str]
    delay: re.Pattern[str] | None = None


def _re(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), re.I)


INTROS: tuple[Intro, ...] = (
    Intro("qmail", _re(r"this is the qmail-send program at", r"wasn'?t able to deliver your message to the "
                       r"following addresses", r"this is the mail delivery agent at",
                       r"unable to deliver your message to the following addresses")),
    Intro("exim", _re(r"this message was created automatically by mail delivery software",
                      r"could not be delivered to one or more of its\s+recipients"),
          _re(r"has not yet been delivered to one or more of its\s+recipients after more than",
              r"delivery attempts will continue to be made")),
    Intro("postfix", _re(r"this is the (?:postfix program|mail system) at host",
                         r"i'm sorry to have to inform you that your message could not\s+be delivered"),
          _re(r"this is a warning only\.?\s+you do not need to resend your message",
              r"could not be delivered for more than .{0,40}\s*it will be retried until")),
    Intro("opensmtpd", _re(r"an error has occurred while attempting to deliver a message for\s+the following",
                           r"this is the mailer-daemon, please do not reply"),
          _re(r"delivery of this message has been delayed", r"this is just a warning")),
    Intro("courier", _re(r"this is a delivery status notification from [\s\S]{0,200}running the courier")),
    Intro("domino", _re(r"was not delivered to:\s*\n(?:.*\n){1,8}?\s*because:")),
    Intro("gmail", _re(r"delivery to the following recipients? failed permanently",
                       r"technical details of permanent failure", r"your message wasn'?t delivered to",
                       r"the response from the remote server was:", r"address not found"),
          _re(r"delivery to the following recipients? has been delayed",
              r"technical details of temporary failure", r"message not delivered yet",
              r"will retry for \d+ more")),
    Intro("yahoo", _re(r"message from yahoo", r"sorry, we were unable to deliver your message to the following",
                       r"unable to deliver message to the following address")),
    Intro("imailserver", _re(r"(?:^|\n)(?:unknown user|invalid final delivery userid|user mailbox exceeds "
                             r"allowed size|delivery failed \d+ attempts|requested action not taken)[^\n]*:\s*\S+@")),
    Intro("windows", _re(r"this is an automatically generated delivery status notification",
                         r"delivery to the following recipients failed"),
          _re(r"delivery to the following recipients has been delayed")),
    Intro("mdaemon", _re(r"the following message was undeliverable", r"session transcript follows")),
)
_INDEX = {intro.family: intro for intro in INTROS}
# All the sentences in one regex, so that one pass over a notice finds every family that speaks in it.
_ALL = re.compile("|".join(
    f"(?P<{kind}{n}>{pattern.pattern})"
    for n, intro in enumerate(INTROS)
    for kind, pattern in (("f", intro.failure), ("d", intro.delay)) if pattern is not None), re.I)


def _sentences(mail: Mail) -> dict[str, tuple[int, int]]:
    """Per family, where its failure and its delay sentence first occur (-1: nowhere); once per mail."""
    cached = mail.cache.get("intro")
    if isinstance(cached, dict):
        return cached
    found: dict[str, tuple[int, int]] = {}
    for m in _ALL.finditer(mail.text):
        name = m.lastgroup or ""
        family = INTROS[int(name[1:])].family
        failure, delay = found.get(family, (-1, -1))
        if name[0] == "f" and failure < 0:
            failure = m.start()
        elif name[0] == "d" and delay < 0:
            delay = m.start()
        found[family] = (failure, delay)
    mail.cache["intro"] = found
    return found


def _start_of_line(text: str, pos: int) -> int:
    return text.rfind("\n", 0, pos) + 1


def read_intro(mail: Mail, intro: Intro) -> list[Finding] | None:
    """The recipients after the family's sentence; all `delayed` when it is the warning sentence."""
    failure, delay = _sentences(mail).get(intro.family, (-1, -1))
    if failure < 0 and delay < 0:
        return None
    first = min(pos for pos in (failure, delay) if pos >= 0)
    text = mail.text
    findings = read_generic(mail, text[_start_of_line(text, first):])
    if not findings:
        return None
    if delay >= 0 and (failure < 0 or delay <= failure):
        for f in findings:
            f.action = f.action or "delayed"
    return findings


def reader(family: str) -> Callable[[Mail], list[Finding] | None]:
    intro = _INDEX[family]
    return lambda mail: read_intro(mail, intro)
