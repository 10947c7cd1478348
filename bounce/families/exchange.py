"""Microsoft Exchange 5.5 to 2003 notices written for humans (later versions write RFC 3464 reports).

    Your message … did not reach the following recipient(s):        (Internet Mail Service, 5.5)
    The following recipient(s) could not be reached:                  (Exchange 2000 / 2003)

    user@example.net on 29 Apr 2007 16:51:51 -0500
        <explanation in English>
        MSEXCH:IMS:ORG:SITE:SERVER 0 (000C05A6) Unknown Recipient    (5.5: an IMS error code)
        <mx.example.net #5.1.1>                                        (2000/2003: the DSN status)

The IMS error codes are Exchange's own, documented per code; the rest is read like any reply text.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR, Finding, Mail, clean_lines, find_command

_INTRO = re.compile(r"did not reach the following recipient\(?s?\)?:?|"
                    r"the following recipient\(?s?\)? (?:could|can)not be reached:?|"
                    r"your message did not reach some or all of the intended recipients", re.I)
# "user@host on <date>", or the X.400 form "c=US;a= ;p=…;dda:SMTP=user@host; on <date>".
_RCPT = re.compile(r"^[ \t]*(?:[^\n]{0,300}?(?:SMTP|smtp)[=:])?<?(" + ADDR + r")>?;?[ \t]+on[ \t]+\S", re.M)
_IMS_CODE = re.compile(r"MSEXCH:\S*.{0,120}?\(([0-9A-F]{8})\)", re.I)
# Internet Mail Service error codes (Microsoft KB articles on IMS non-delivery reports).
_IMS_REASONS = {
    "000C05A6": "userunknown",  # Unknown Recipient
    "000C0595": "filtered",  # Ambiguous Recipient
    "00120270": "networkerror",  # Too Many Hops
    "000B0981": "securityerror",  # remote server does not support AUTH
    "00050311": "contenterror", "000502CC": "contenterror",  # conversion to Internet format failed
    "00010256": "systemerror", "000D06B5": "systemerror",  # too many recipients; no proxy for recipient
}


def read_exchange(mail: Mail) -> list[Finding] | None:
    m = _INTRO.search(mail.text)
    if m is None:
        return None
    text = mail.text[m.end():]
    marks = list(_RCPT.finditer(text))
    if not marks:
        return None
    findings = []
    for n, mark in enumerate(marks):
        end = marks[n + 1].start() if n + 1 < len(marks) else len(text)
        block = text[mark.end():end].split("\n")[1:]
        diag = clean_lines(block)
        reason = ""
        code = _IMS_CODE.search(diag)
        if code is not None:
            reason = _IMS_REASONS.get(code.group(1).upper(), "")
            # The code line says what the code means; the lines above it are Exchange's paraphrase.
            diag = diag[code.end():].strip() or diag
        findings.append(Finding(mark.group(1).lower(), diagnostic=diag, command=find_command(diag),
                                reason=reason))
    return findings
