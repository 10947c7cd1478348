"""Refusals from mailing-list managers: the list, not a person, is the recipient that failed.

Google Groups answers a post it will not take with a notice naming the group's address; list managers
such as fml answer posts from non-members with a notice carrying their own `X-MLServer` header.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR_RE, Finding, Mail, clean_lines


def read_google_groups(mail: Mail) -> list[Finding] | None:
    """Google Groups refusals: the group address is the recipient; the reason is always 'rejected'."""
    if "groups.google.com" not in mail.full_text:
        return None
    m = ADDR_RE.search(mail.header("x-failed-recipients"))
    group = m.group(0).lower() if m else ""
    if not group and mail.original is not None:
        m = ADDR_RE.search(mail.original.get("to"))
        group = m.group(0).lower() if m else ""
    if not group:
        return None
    return [Finding(group, reason="rejected", diagnostic=" ".join(mail.text.split())[:2000])]


def read_list_refusal(mail: Mail) -> list[Finding] | None:
    """A mailing-list manager refusing a post from a non-member: the list is the failed recipient."""
    if not (mail.header("x-mlserver") or mail.header("x-ml-name")):
        return None
    if not re.search(r"not (?:a )?member|are not member|only members|members only", mail.text + mail.subject,
                     re.I):
        return None
    m = ADDR_RE.search(mail.text)
    addr = m.group(0).lower() if m else ""
    if not addr:
        return None
    return [Finding(addr, reason="rejected", diagnostic=clean_lines(mail.text.split("\n")))]
