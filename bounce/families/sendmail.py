"""sendmail's notice without (or before) RFC 3464: the recipient block, then the session transcript.

    ----- The following addresses had permanent fatal errors -----
    <user@example.net>
        (reason: 550 5.1.1 <user@example.net>... User unknown)
        (expanded from: <alias@example.net>)

    ----- Transcript of session follows -----
    ... while talking to mx.example.net.:
    >>> RCPT To:<user@example.net>
    <<< 550 5.1.1 <user@example.net>... User unknown
    550 5.1.1 <user@example.net>... User unknown

The recipients are the ones in the block ("transient non-fatal errors" is the warning: delayed); each
one's reason is its own "(reason: …)" line, else the reply-code line naming it, else the reply the
transcript shows to its RCPT, else the transcript's last failure reply and the command it answered.
Older sendmail versions (V5 and the like) write only the transcript: its reply-code lines name them.
"""

from __future__ import annotations

import re

from bounce.mail import ADDR, Finding, Mail, clean_lines

_BLOCK = re.compile(r"^[ \t]*-+ ?the following addresses? ha(?:d|s|ve) (permanent fatal|transient non-fatal) "
                    r"errors ?-*[ \t]*$", re.I | re.M)
_TRANSCRIPT = re.compile(r"^[ \t]*-+ ?transcript of session follows ?-*[ \t]*$", re.I | re.M)
_SECTION = re.compile(r"^[ \t]*-{3,}", re.M)
_BLOCK_ADDR = re.compile(r"^[ \t]*<?(" + ADDR + r")>?[ \t]*(?:\.\.\.[ \t]*(.*))?$")
_REASON_LINE = re.compile(r"^[ \t]*\(reason: ?(.*?)\)?[ \t]*$", re.I)
_COMMAND = re.compile(r"^[ \t]*>>> ?([A-Za-z]+)(?:[ \t]+(?:to|from)?:?[ \t]*<?(" + ADDR + r")?)?", re.I)
_REPLY = re.compile(r"^[ \t]*<<< ?([45]\d\d[ -].*)$")
_CODE_LINE = re.compile(r"^[ \t]*([45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3}[ \t]+)?)<?(" + ADDR + r")>?\.\.\.[ \t]*(.*)$")
_ABOUT = re.compile(r"^[ \t]*<?(" + ADDR + r")>?\.\.\.[ \t]*(.+)$")


def read_sendmail(mail: Mail) -> list[Finding] | None:
    text = mail.text
    block = _BLOCK.search(text)
    transcript = _TRANSCRIPT.search(text)
    if block is None and transcript is None:
        return None
    delayed = block is not None and block.group(1).lower().startswith("transient")
    recipients: dict[str, list[str]] = {}
    if block is not None:
        end = _SECTION.search(text, block.end())
        for line in text[block.end(): end.start() if end else len(text)].split("\n"):
            m = _BLOCK_ADDR.match(line)
            if m is not None:
                recipients.setdefault(m.group(1).lower(), []).extend([m.group(2)] if m.group(2) else [])
                continue
            reason = _REASON_LINE.match(line)
            if reason is not None and recipients:
                recipients[list(recipients)[-1]].append(reason.group(1))
    by_rcpt, last_error, last_command = _read_transcript(text[transcript.end():] if transcript else "")
    if not recipients:
        recipients = {a: [] for a in by_rcpt}
    findings = []
    for addr, own in recipients.items():
        got = by_rcpt.get(addr)
        if own:
            diag, command = clean_lines(own), got[1] if got else ""
        elif got is not None:
            diag, command = got
        else:
            diag, command = last_error, last_command
        findings.append(Finding(addr, diagnostic=diag, command=command, action="delayed" if delayed else ""))
    return findings or None


def _read_transcript(text: str) -> tuple[dict[str, tuple[str, str]], str, str]:
    """Per recipient (reply text, command), and the last failure reply with the command it answered."""
    by_rcpt: dict[str, tuple[str, str]] = {}
    command, rcpt, last_error, last_command = "", "", "", ""
    pending = ""  # the remote host's reply the next reply-code line sums up
    for line in text.split("\n"):
        if _SECTION.match(line) and by_rcpt:
            break
        m = _COMMAND.match(line)
        if m is not None:
            command = m.group(1).upper()
            command = "MAIL" if command == "MAIL" else "EHLO" if command in ("EHLO", "HELO") else command
            rcpt = m.group(2).lower() if command == "RCPT" and m.group(2) else ""
            continue
        reply = _REPLY.match(line)
        if reply is not None:
            last_error, last_command = reply.group(1).strip(), command
            pending = last_error
            if rcpt:
                by_rcpt.setdefault(rcpt, (last_error, command))
            continue
        code = _CODE_LINE.match(line)
        if code is not None:
            addr = code.group(2).lower()
            summary = f"{code.group(1)}{code.group(3)}".strip()
            by_rcpt[addr] = (f"{pending} {summary}".strip() if pending else summary,
                             by_rcpt.get(addr, ("", last_command or command))[1])
            pending = ""
            continue
        about = _ABOUT.match(line)
        if about is not None and about.group(1).lower() not in by_rcpt:
            by_rcpt[about.group(1).lower()] = (about.group(2).strip(), command)
    return by_rcpt, last_error, last_command
