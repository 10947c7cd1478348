"""The commands of an SMTP/LMTP session that carry the envelope and the message: `GatewaySMTP`, `GatewayLMTP`.

- **The envelope as SMTP allows it, at its command.** Paths are parsed by smtp_syntax (RFC 5321, RFC 6531):
  a malformed one is 501, a non-ASCII one without SMTPUTF8 is 553 5.6.7 (RFC 6533), at MAIL or RCPT, never at
  the end of DATA; HELO/EHLO names are printable ASCII. VRFY never verifies (252).
- **DATA** is read in chunks up to the only terminator RFC 5321 allows, ``<CRLF>.<CRLF>``, so bare-LF
  sequences (``<LF>.<LF>``, the SMTP smuggling family) stay inside the message. The size limit applies to what
  RFC 1870 counts (no terminator, no transparency dots) however TCP cut the bytes; past it the rest is drained
  and discarded, never buffered. Reading line by line, as aiosmtpd does, was most of its CPU per message.
- **LMTP** answers every outcome after DATA, refusals included, once per accepted recipient (RFC 2033 §4.2).

Hooks for later features: a new command is an `smtp_<NAME>` method here; a check at the end of DATA belongs to
the handler's `handle_DATA` (smtp.py), whose single-line answer is repeated per recipient for LMTP.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiosmtpd.smtp import MISSING, syntax

from gateway.intake import xforward
from gateway.intake.smtp_session import SmtpSession, log
from gateway.intake.smtp_syntax import PathError, is_local_name, is_valid_helo, parse_params, split_path
from gateway.logs import printable

_TERMINATOR = b"\r\n.\r\n"
_CHUNK = 256 * 1024


class GatewaySMTP(SmtpSession):
    """SMTP: the session of smtp_session.py with the commands of a gateway."""

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and not is_valid_helo(hostname):
            await self.push("501 5.5.4 Syntax: HELO hostname (printable ASCII)")
            return
        await super().smtp_HELO(hostname)

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        if hostname and not is_valid_helo(hostname):
            await self.push("501 5.5.4 Syntax: EHLO hostname (printable ASCII)")
            return
        await super().smtp_EHLO(hostname)

    @syntax("QUIT")
    async def smtp_QUIT(self, arg: str) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: QUIT")
            return
        await self.push("221 2.0.0 Bye")
        self._end_reason = "quit"  # the loop returns; _end closes the transport after the reply

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str | None) -> None:
        # Never verified (that would tell a spammer which addresses exist): 252 for anything well-formed.
        if await self.check_auth_needed("VRFY"):
            return
        text = (arg or "").strip()
        utf8 = text.upper().endswith(" SMTPUTF8")  # RFC 6531 §3.7.4.2
        text = text[:-9].rstrip() if utf8 else text
        try:
            name = split_path(text, null_ok=False).address if "@" in text or text.startswith("<") else text
        except PathError:
            name = ""
        if not name or not (is_local_name(name) or "@" in name):
            await self.push("501 5.1.3 Bad recipient address syntax")
        elif not name.isascii() and not utf8:
            await self.push("553 5.6.7 Non-ASCII address needs SMTPUTF8")
        else:
            await self.push("252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and self.envelope is not None
        usage = "501 5.5.4 Syntax: MAIL FROM:<address>" + (" [SP <mail-parameters>]"
                                                          if self.session.extended_smtp else "")
        rest = self._strip_command_keyword("FROM:", arg or "")
        if rest is None:
            await self.push(usage)
            return
        if self.envelope.mail_from:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        try:
            path = split_path(rest, null_ok=True)
        except PathError:
            self._detail = {"sender": printable(rest)}
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        self._detail = {"sender": printable(path.address)}
        params = parse_params(path.params)
        if params is None or (params and not self.session.extended_smtp):
            await self.push(usage)
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        body = params.pop("BODY", "7BIT")
        size = params.pop("SIZE", None)
        if not isinstance(smtputf8, bool) or not isinstance(body, str) or body.upper() not in ("7BIT", "8BITMIME"):
            await self.push("501 5.5.4 Syntax: SMTPUTF8 takes no value; BODY is 7BIT or 8BITMIME")
            return
        if size is not None and (not isinstance(size, str) or not size.isdigit()):
            await self.push("501 5.5.4 Syntax: SIZE=<octets>")
            return
        if params:
            await self.push("555 5.5.4 MAIL FROM parameters not recognized or not implemented")
            return
        if path.needs_smtputf8 and not smtputf8:
            await self.push("553 5.6.7 Non-ASCII sender address needs SMTPUTF8")  # RFC 6531 §3.5, RFC 6533
            return
        if size is not None and self.data_size_limit and int(size) > self.data_size_limit:
            await self.push(f"552 5.3.4 Message size exceeds fixed maximum message size ({self.data_size_limit})")
            return
        self.envelope.smtp_utf8 = smtputf8
        options = path.params.upper().split()
        status = await self._call_handler_hook("MAIL", path.address, options)
        if status is MISSING:
            self.envelope.mail_from = path.address or "<>"
            self.envelope.mail_options.extend(options)
            status = "250 2.1.0 Ok"
        await self.push(status)

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and self.envelope is not None
        if not self.envelope.mail_from:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        rest = self._strip_command_keyword("TO:", arg or "")
        if rest is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            path = split_path(rest, null_ok=False)
        except PathError:
            self._detail = {"rcpt": printable(rest)}
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        self._detail = {"rcpt": printable(path.address), "sender": printable(self.envelope.mail_from)}
        if path.needs_smtputf8 and not self.envelope.smtp_utf8:
            await self.push("553 5.6.7 Non-ASCII recipient address needs SMTPUTF8")
            return
        params = parse_params(path.params)
        if params is None or (params and not self.session.extended_smtp):
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if params:  # we advertise no extension with RCPT parameters (DSN's NOTIFY/ORCPT)
            await self.push("555 5.5.4 RCPT TO parameters not recognized or not implemented")
            return
        status = await self._call_handler_hook("RCPT", path.address, [])
        if status is MISSING:
            self.envelope.rcpt_tos.append(path.address)
            status = "250 2.1.5 Ok"
        await self.push(status)

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if not self.tls_context:  # not offered: aiosmtpd's 454 would tell the client to try again later
            await self.push("502 5.5.1 Error: command not implemented")
            return
        await super().smtp_STARTTLS(arg)

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        try:
            return await super().challenge_auth(challenge, encode_to_b64, False)
        except ValueError:  # StreamReader.readline past the line limit
            await self.push("500 5.5.6 Authentication exchange line is too long")
            return MISSING

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        """The original client, from a trusted relay (Postfix) only: gateway/intake/xforward.py."""
        assert self.session is not None and self.envelope is not None
        await self.push(xforward.command(getattr(self.event_handler, "relays", None), self.session.peer,
                                         self.envelope, arg or ""))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self.in_data = True
        self.data_idle.clear()
        try:
            outcome = await self._read_data()
            if outcome is None:  # the peer left or the deadline passed: nothing was acknowledged
                return
            content, problem = outcome
            self._deadline = math.inf  # storing is our wait, not the client's
            rcpts = list(self.envelope.rcpt_tos)
            status: str | list[str]
            if problem is not None:
                status = problem
            else:
                self.envelope.content = self.envelope.original_content = content
                try:
                    status = await self._call_handler_hook("DATA")
                except Exception as exc:
                    log.error("intake.data_failed", peer=self.peer, error=repr(exc), exc_info=True)
                    status = await self.handle_exception(exc)
                if status is MISSING:
                    status = "250 2.0.0 Ok"
                self._accepted += any(s.startswith("250") for s in ([status] if isinstance(status, str) else status))
            self._set_post_data_state()
            self._arm(self._timeout_duration)
            await self._push_lines(self._per_recipient(status, rcpts))
        finally:
            self.in_data = False
            self.data_idle.set()

    def _per_recipient(self, status: str | list[str], rcpts: list[str]) -> list[str]:
        """SMTP: one reply. LMTP: one per recipient accepted at RCPT, whatever the outcome (RFC 2033 §4.2)."""
        if isinstance(status, list):
            return status
        return [status] * len(rcpts) if self.lmtp else [status]

    async def _read_data(self) -> tuple[bytes, str | None] | None:
        """Read up to <CRLF>.<CRLF>. Returns (unstuffed content, refusal line or None), or None if the peer left
        or the deadline passed."""
        cfg = self.listener_cfg
        limit = cfg.max_message_size
        per_octet = 1.0 / cfg.min_data_rate
        idle = cfg.idle_timeout
        # The whole phase: data_timeout, plus one second per min_data_rate octets received. Silence between two
        # chunks: idle_timeout, as between commands.
        phase_deadline = self.loop.time() + cfg.data_timeout
        self._set_deadline(min(phase_deadline, self.loop.time() + idle))
        reader = self._reader
        # The CRLF that ended the DATA command starts the virtual buffer, so an empty message (".\r\n") and a
        # dot at the start of the first line are found the same way as everywhere else.
        buf = bytearray(b"\r\n")
        search_from = 0
        dots = 0  # transparency dots seen so far ("\r\n." occurrences): RFC 1870 does not count them
        dots_from = 0
        over = False
        on_headers = getattr(self.event_handler, "data_headers", None)  # sender authentication starts early
        while True:
            idx = buf.find(_TERMINATOR, search_from)
            if idx >= 0:
                break
            if not over:
                dots += buf.count(b"\r\n.", dots_from)
                dots_from = max(0, len(buf) - 2)
                # What is buffered may end with a partial terminator: at most one dot and a CR of it are not
                # content, so this is over the limit only if the content is.
                over = len(buf) - 2 - dots - 1 > limit
            if over:
                del buf[:-4]  # keep only a tail that may hold a split terminator; the rest is discarded
            search_from = max(0, len(buf) - 4)
            try:
                chunk = await reader.read(_CHUNK)
            except (ConnectionError, OSError, asyncio.IncompleteReadError):
                return None
            if not chunk:
                return None
            phase_deadline += len(chunk) * per_octet  # it grows with the data received, never by the clock
            self._set_deadline(min(phase_deadline, self.loop.time() + idle))
            buf += chunk
            if on_headers is not None and not over and (end := buf.find(b"\r\n\r\n", 0, 256 * 1024)) >= 0:
                on_headers(self.envelope, bytes(buf[2:end + 2]))  # the header section is in (sender auth)
                on_headers = None
        leftover = bytes(buf[idx + len(_TERMINATOR):])
        if leftover:
            # Pipelined commands after the terminator go back to the reader for the command loop.
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if over:
            return b"", f"552 5.3.4 Message too big for system (limit {limit} octets)"
        body = bytes(buf[:idx + 2]).replace(b"\r\n.", b"\r\n")[2:]
        if len(body) > limit:
            return b"", f"552 5.3.4 Message too big for system (limit {limit} octets)"
        max_line = self.listener_cfg.max_line_length
        if len(body) > max_line and longest_line(body) > max_line:
            return b"", f"500 5.5.2 Line too long (limit {max_line} octets, RFC 5321 4.5.3.1.6)"
        return body, None


def longest_line(data: bytes) -> int:
    """The longest line in octets, its CRLF included (as RFC 5321 §4.5.3.1.6 counts)."""
    return max(map(len, data.split(b"\n")), default=0) + 1


class GatewayLMTP(GatewaySMTP):
    """LMTP (RFC 2033): LHLO instead of HELO/EHLO, one reply per recipient after DATA."""

    lmtp = True

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "HELO" not recognized (this is LMTP)')

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "EHLO" not recognized (this is LMTP)')
