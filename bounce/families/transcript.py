"""Postfix's "errors from" notices: an In:/Out: transcript of the SMTP session that failed.

The recipient is the RCPT TO the transcript shows; the reason is the last failure reply, and the
command it answered is the last command before it.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR, Finding, Mail

_TRANSCRIPT_RCPT = re.compile(r"^[ \t]*(?:In:|>>>)[ \t]*RCPT TO:\s*<?(" + ADDR + r")>?", re.I | re.M)
_TRANSCRIPT_LINE = re.compile(r"^\s*(In|Out):\s*(.*)$")
_FAILURE_REPLY = re.compile(r"[45]\d\d[ -]")


def read_smtp_transcript(mail: Mail) -> list[Finding] | None:
    """Postfix's "errors from" notices: an In:/Out: transcript of the session that failed."""
    if "Transcript of session follows" not in mail.text or " Out: " not in mail.text:
        return None
    rcpts = [a.lower() for a in _TRANSCRIPT_RCPT.findall(mail.text)]
    if not rcpts:
        return None
    command = ""
    error = ""
    error_command = ""
    for line in mail.text.split("\n"):
        m = _TRANSCRIPT_LINE.match(line)
        if not m:
            continue
        if m.group(1) == "In":
            words = m.group(2).replace(":", " ").split()
            command = words[0].upper() if words else ""
        elif _FAILURE_REPLY.match(m.group(2)):
            error, error_command = m.group(2), command or "DATA"
    if not error:
        return None
    return [Finding(a, diagnostic=error, command=error_command) for a in dict.fromkeys(rcpts)]
