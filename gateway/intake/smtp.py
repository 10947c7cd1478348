"""SMTP, LMTP and submission listeners on aiosmtpd, with a replacement DATA reader.

aiosmtpd keeps the session state machine, EHLO/LHLO, STARTTLS and AUTH. Two things are replaced:
- `smtp_DATA`: aiosmtpd reads DATA one line at a time (about 65 awaits for 4 KiB), which is most of its CPU
  cost. `GatewaySMTP` reads chunks and looks for the one terminator RFC 5321 allows, ``<CRLF>.<CRLF>``.
  Because nothing else ends the data, bare-LF sequences (``<LF>.<LF>``, ``<LF>.<CRLF>``, the SMTP smuggling
  family) stay inside the message instead of starting a second one. The size limit is enforced while
  reading: past it the rest is drained and discarded, never buffered.
- LMTP's DATA answer: RFC 2033 wants one reply per accepted recipient (aiosmtpd#517); the handler returns
  them as one multi-line string and aiosmtpd's push adds the final CRLF.

The reply after DATA is sent only once the spool's commit returned (the spool fsyncs; see spool/sqlite.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, AnyStr, Protocol

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session, _AuthMechAttr, login_always_fail, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from gateway.config import ListenerConfig
from gateway.headers import extract_message_id
from gateway.host import default_hostname
from gateway.logs import get_logger
from gateway.spool import Direction, Envelope, Spool, State

log = get_logger("mailgw.intake")

# Answer for a recipient: None to accept, else the full reply line ("550 5.1.1 ...").
RcptCheck = Callable[[str, str, str], str | None]
# End of DATA, per recipient (same answers), for rules that need the message (routing.auto_submitted: refuse).
MessageCheck = Callable[[bytes, tuple[str, ...]], list[str | None]]


class Hold(Protocol):
    """Spool the message deferred until `until` with `reason` (Odoo is down), then report its queue id."""

    @property
    def until(self) -> float: ...

    @property
    def reason(self) -> str: ...

    def spooled(self, queue_id: str) -> None: ...


# (envelope sender, accepted recipients) -> a Hold, or None to spool the message as received.
HoldCheck = Callable[[str, tuple[str, ...]], Hold | None]


class AuthHooks(Protocol):
    """Sender authentication run alongside the session (gateway/auth/intake.py)."""

    def on_mail(self, session: Session, envelope: SmtpEnvelope, mail_from: str) -> None: ...

    def on_headers(self, envelope: SmtpEnvelope, header: bytes) -> None: ...

    async def on_data(self, session: Session, envelope: SmtpEnvelope, raw: bytes, rcpts: Sequence[str]) -> Any: ...
_TERMINATOR = b"\r\n.\r\n"
_CHUNK = 256 * 1024


# We advertise ENHANCEDSTATUSCODES (RFC 2034), so aiosmtpd's own bare replies get one too.
_ENHANCED_RE = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}")
_BARE_REPLY_RE = re.compile(r"^(\d{3}) ")
_ENHANCED_FOR = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "552": "5.3.4",
                 "555": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11", "554": "5.0.0"}


def with_enhanced_code(line: str) -> str:
    """'503 Error: need MAIL command' -> '503 5.5.1 Error: need MAIL command' (greeting, 354 and 334 excepted)."""
    if line[5:6] == "." and line[4:5] in ("2", "4", "5"):  # our own replies already carry one
        return line
    m = _BARE_REPLY_RE.match(line)
    if not m or _ENHANCED_RE.match(line) or "\r\n" in line:
        return line
    code = m.group(1)
    if code in ("220", "354", "334") or line == "250 HELP":  # greeting, continuations, EHLO keyword
        return line
    enhanced = _ENHANCED_FOR.get(code) or {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(code[0])
    return f"{code} {enhanced} {line[4:]}" if enhanced else line


def longest_line(data: bytes) -> int:
    return max(map(len, data.split(b"\n")), default=0)


# aiosmtpd.SMTP.__init__ walks dir() of the protocol and of the handler on every connection to find its
# smtp_*/auth_*/handle_* methods (about 0.6 ms per connection). A short, cached __dir__ gives it the same
# answer at a fraction of the cost.
_DIR_CACHE: dict[type, list[str]] = {}


def _hook_dir(obj: object, prefixes: tuple[str, ...]) -> list[str]:
    cls = type(obj)
    names = _DIR_CACHE.get(cls)
    if names is None:
        names = [n for n in object.__dir__(obj) if n.startswith(prefixes)]
        _DIR_CACHE[cls] = names
    return names


_HOOKS: dict[int, tuple[object, dict[str, Callable[..., Any]]]] = {}


def _handler_hooks(handler: object) -> dict[str, Callable[..., Any]]:
    """handle_* methods by command; one handler serves every session of a listener, so build it once."""
    cached = _HOOKS.get(id(handler))
    if cached is None or cached[0] is not handler:
        hooks = {attr[7:]: getattr(handler, attr) for attr in _hook_dir(handler, ("handle_", "auth_"))
                 if attr.startswith("handle_")}
        cached = _HOOKS[id(handler)] = (handler, hooks)
    return cached[1]


class _SmtpMethods(dict):
    """aiosmtpd's command table (`self._smtp_methods.get(COMMAND)`), bound on lookup instead of per connection."""

    def __init__(self, proto: SMTP):
        super().__init__()
        self.proto = proto

    def get(self, command: str, default: Any = None) -> Any:
        method = getattr(self.proto, f"smtp_{command}", None) if command.isalpha() else None
        return default if method is None else method

    def __contains__(self, command: object) -> bool:
        return isinstance(command, str) and self.get(command) is not None

    def keys(self) -> Any:
        return [n[5:] for n in _hook_dir(self.proto, ("smtp_", "auth_")) if n.startswith("smtp_")]

    def items(self) -> Any:  # HELP lists the commands
        return [(name, getattr(self.proto, f"smtp_{name}")) for name in self.keys()]


_AUTH_NAMES: dict[tuple[type, type], list[tuple[str, str, bool]]] = {}


def _auth_names(proto_cls: type, handler_cls: type) -> list[tuple[str, str, bool]]:
    """(mechanism, attribute, defined on the protocol) for auth_* methods, as aiosmtpd names them."""
    key = (proto_cls, handler_cls)
    if key not in _AUTH_NAMES:
        found: dict[str, tuple[str, str, bool]] = {}
        for cls, own in ((proto_cls, True), (handler_cls, False)):
            for attr in sorted(n for n in dir(cls) if n.startswith("auth_")):
                func = getattr(cls, attr)
                name = getattr(func, "__auth_mechanism_name__", attr.replace("auth_", "").replace("__", "-"))
                found[name] = (name, attr, own)
        _AUTH_NAMES[key] = list(found.values())
    return _AUTH_NAMES[key]


# The common MAIL/RCPT argument: <local@domain> followed by parameters. Anything else (quoted local parts,
# source routes, comments) goes to aiosmtpd's full RFC 5321 parser.
_PLAIN_ANGLE_ADDR = re.compile(r"\s*<((?:[^<>\s\"\\(),;:@\[\]]+@[^<>\s\"\\(),;:@\[\]]+)?)>(.*)", re.DOTALL)


_REPLY_BUFFER_LIMIT = 64 * 1024


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with a chunked DATA reader and limits from the listener config."""

    def __dir__(self) -> list[str]:
        return _hook_dir(self, ("smtp_", "auth_"))

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        m = _PLAIN_ANGLE_ADDR.fullmatch(arg) if arg else None
        if m is None:
            return super()._getaddr(arg)
        addr = m.group(1) or "<>"  # aiosmtpd's parser also gives the null path as "<>" ("" is a syntax error)
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, m.group(2)

    def __init__(self, handler: Any, *, listener: ListenerConfig, hostname: str,
                 on_lost: Callable[[GatewaySMTP], None] | None = None, tls_context: ssl.SSLContext | None = None,
                 require_starttls: bool = False, authenticator: Any = None, auth_required: bool = False,
                 auth_require_tls: bool = True):
        # The same state aiosmtpd 1.4's SMTP.__init__ sets up, with the per-connection introspection (dir,
        # inspect.getmembers, inspect.signature: a fifth of the CPU per message) replaced by per-class caches.
        self.listener_cfg = listener
        self.in_data = False
        self.data_idle = asyncio.Event()  # clear while a DATA is being read and stored: drain waits for it
        self.data_idle.set()
        self._on_lost = on_lost
        self.__ident__ = listener.banner
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = handler
        self.data_size_limit = listener.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.command_size_limits.clear()
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = bool(tls_context and require_starttls)
        self._timeout_duration = listener.idle_timeout
        self._timeout_handle = None
        self._idle_deadline = 0.0
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = authenticator
        self._auth_callback = None if authenticator is not None else login_always_fail
        self._auth_required = auth_required
        self._auth_methods = {name: _AuthMechAttr(getattr(self if own else handler, attr), own)
                              for name, attr, own in _auth_names(type(self), type(handler))}
        self._handle_hooks = _handler_hooks(handler)
        self._ehlo_hook_ver = "new" if "EHLO" in self._handle_hooks else None
        self._smtp_methods = _SmtpMethods(self)
        self._enforce_call_limit = False
        self._held: list[bytes] = []  # continuation lines of the reply being pushed (see push)

    async def push(self, status: AnyStr) -> None:
        data = (with_enhanced_code(status).encode("utf-8") if isinstance(status, str) else status) + b"\r\n"
        last = data.rfind(b"\n", 0, -2) + 1  # the last line of what may be several (LMTP's per-recipient replies)
        if data[last + 3 : last + 4] == b"-":
            # A continuation line ("250-PIPELINING"): aiosmtpd pushes a multi-line reply line by line, and each
            # write is a send() syscall. Hold it until the reply's last line, so EHLO costs one syscall, not ten.
            self._held.append(data)
            return
        if self._held:
            self._held.append(data)
            data = b"".join(self._held)
            self._held.clear()
        transport = self._writer.transport
        transport.write(data)
        # Replies are small: wait for the socket only when the peer does not read (flow control kicks in).
        if transport.get_write_buffer_size() > _REPLY_BUFFER_LIMIT:
            await self._writer.drain()

    def connection_lost(self, error: Exception | None) -> None:
        if self._on_lost is not None:
            self._on_lost(self)
        super().connection_lost(error)

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels and re-creates a timer on every command and DATA chunk; moving a deadline and
        re-arming one timer only when it fires does the same job for a fraction of the cost."""
        now = self.loop.time()
        self._idle_deadline = now + (duration or self._timeout_duration)
        if self._timeout_handle is None or self._timeout_handle.cancelled():
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        if self.loop.time() >= self._idle_deadline:
            self._timeout_handle = None
            self._timeout_cb()
        else:
            self._timeout_handle = self.loop.call_at(self._idle_deadline, self._idle_check)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
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
            if outcome is None:  # connection lost mid-DATA: nothing was acknowledged
                return
            content, problem = outcome
            if problem is not None:
                self._set_post_data_state()
                await self.push(problem)
                return
            self.envelope.content = content
            self.envelope.original_content = content
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)
        finally:
            self.in_data = False
            self.data_idle.set()

    async def _read_data(self) -> tuple[bytes, str | None] | None:
        """Read up to <CRLF>.<CRLF>. Returns (unstuffed content, refusal line or None), or None if the peer left."""
        limit = self.listener_cfg.max_message_size
        reader = self._reader
        # The CRLF that ended the DATA command starts the virtual buffer, so an empty message (".\r\n") and a
        # dot at the start of the first line are found the same way as everywhere else.
        buf = bytearray(b"\r\n")
        search_from = 0
        discarded = 0
        on_headers = getattr(self.event_handler, "data_headers", None)
        while True:
            idx = buf.find(_TERMINATOR, search_from)
            if idx >= 0:
                break
            if len(buf) - 2 > limit:
                # Over the limit: keep only a tail that may hold a split terminator.
                discarded += len(buf) - 4
                del buf[:-4]
            search_from = max(0, len(buf) - 4)
            try:
                chunk = await reader.read(_CHUNK)
            except (ConnectionError, asyncio.IncompleteReadError):
                return None
            if not chunk:
                return None
            self._reset_timeout()
            buf += chunk
            if on_headers is not None and (end := buf.find(b"\r\n\r\n", 0, 256 * 1024)) >= 0:
                on_headers(self.envelope, bytes(buf[2:end + 2]))  # the header section is in (sender auth)
                on_headers = None
        leftover = bytes(buf[idx + len(_TERMINATOR):])
        if leftover:
            # Pipelined commands after the terminator go back to the reader for _handle_client.
            reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
        if discarded or idx > limit:
            return b"", f"552 5.3.4 Message too big for system (limit {limit} octets)"
        body = bytes(buf[:idx + 2]).replace(b"\r\n.", b"\r\n")[2:]
        max_line = self.listener_cfg.max_line_length
        if len(body) > max_line and longest_line(body) > max_line + 2:
            return b"", f"500 5.5.2 Line too long (limit {max_line} octets, RFC 5321 4.5.3.1.6)"
        return body, None


class GatewayLMTP(GatewaySMTP):
    """LMTP (RFC 2033): LHLO instead of HELO/EHLO, no greeting override, one DATA reply per recipient."""

    @syntax("LHLO hostname")
    async def smtp_LHLO(self, arg: str) -> None:
        await super().smtp_EHLO(arg)

    async def smtp_HELO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "HELO" not recognized (this is LMTP)')

    async def smtp_EHLO(self, arg: str) -> None:
        await self.push('500 5.5.1 Error: command "EHLO" not recognized (this is LMTP)')


class IntakeHandler:
    """aiosmtpd handler: recipient checks at RCPT, spool at DATA, durable 250."""

    def __dir__(self) -> list[str]:
        return _hook_dir(self, ("handle_", "auth_"))

    def __init__(self, *, spool: Spool, listener: ListenerConfig, hostname: str, rcpt_check: RcptCheck,
                 direction: Direction = Direction.INBOUND, on_stored: Callable[[Direction], None] | None = None,
                 message_check: MessageCheck | None = None, hold_check: HoldCheck | None = None,
                 auth: AuthHooks | None = None):
        self.spool = spool
        self.auth = auth
        if auth is not None:
            self.data_headers = auth.on_headers
        self.on_stored = on_stored
        self.message_check = message_check
        self.hold_check = hold_check
        self.listener = listener
        self.hostname = hostname
        self.rcpt_check = rcpt_check
        self.direction = direction
        self.lmtp = listener.kind == "lmtp"
        self.accepted = 0

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # PIPELINING and ENHANCEDSTATUSCODES are what aiosmtpd does but does not say.
        last = responses.pop()
        responses.extend(["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last])
        return responses

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          mail_options: list[str]) -> str:
        # The null sender stays "<>" in the session (aiosmtpd reads "" as "no MAIL yet"); the spool gets "".
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        if self.auth is not None:
            self.auth.on_mail(session, envelope, _sender(envelope.mail_from))
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.listener.max_recipients:
            return f"452 4.5.3 Too many recipients (limit {self.listener.max_recipients})"
        peer = _peer_str(session.peer)
        refusal = self.rcpt_check(address, _sender(envelope.mail_from), peer)
        if refusal is not None:
            log.info("intake.rcpt_refused", rcpt=address, sender=envelope.mail_from, peer=peer, reply=refusal)
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        rcpts = tuple(envelope.rcpt_tos)
        refusals: dict[str, str] = {}
        if self.message_check is not None:
            answers = self.message_check(raw, rcpts)
            refusals = {r: a for r, a in zip(rcpts, answers, strict=True) if a is not None}
            if len(refusals) == len(rcpts):
                log.info("intake.data_refused", peer=_peer_str(session.peer), reply=next(iter(refusals.values())))
                return "\r\n".join(refusals[r] for r in rcpts) if self.lmtp else refusals[rcpts[0]]
        auth = await self.auth.on_data(session, envelope, raw, [r for r in rcpts if r not in refusals]) \
            if self.auth is not None else None
        if auth is not None and auth.refusals:
            # LMTP answers each recipient; SMTP has one answer, so one refusal refuses the message (a 5xx before
            # a 4xx) rather than silently dropping some recipients after a 250.
            refusals.update(auth.refusals)
            line = min(auth.refusals.values(), key=lambda x: x[0] != "5")
            if len(refusals) == len(rcpts) or not self.lmtp:
                log.info("intake.auth_refused", peer=_peer_str(session.peer), reply=line)
                return "\r\n".join(refusals.get(r, line) for r in rcpts) if self.lmtp else line
        accepted = tuple(r for r in rcpts if r not in refusals)
        env = Envelope(
            mail_from=_sender(envelope.mail_from),
            rcpt_tos=accepted,
            intake=self.listener.kind,
            peer=_peer_str(session.peer),
            helo=session.host_name,
            received_at=time.time(),
            source={**({"tls": True} if session.ssl else {}), **({"auth": auth.summary} if auth else {})} or None,
        )
        held = auth.hold if auth is not None else None
        hold = self.hold_check(env.mail_from, accepted) if self.hold_check is not None and not held else None
        state = State.HELD if held else State.DEFERRED if hold else None
        error = f"held by sender authentication ({held.rule}): {held.reason}" if held else hold.reason if hold else None
        try:
            queue_id, _ = await self.spool.put(
                env, raw, direction=self.direction, message_id=extract_message_id(raw),
                message_id_domain=self.hostname, state=state,
                next_attempt_at=hold.until if hold else None, last_error=error)
        except Exception as exc:  # the spool could not commit: nothing acknowledged, the client retries
            log.error("intake.spool_failed", error=str(exc), peer=env.peer)
            return self._per_rcpt(rcpts, "451 4.3.0 Temporary failure, message not stored; try again later")
        self.accepted += 1
        if held is not None:
            log.warning("auth.held", queue_id=queue_id, rule=held.rule, reason=held.reason, sender=env.mail_from)
        if hold is not None:
            hold.spooled(queue_id)
        if self.on_stored is not None:
            self.on_stored(self.direction)
        if self.lmtp:
            # RFC 2033: one reply per recipient accepted at RCPT, in order; a refusal at end of DATA is per
            # recipient too. (SMTP has one reply: the refused recipients' mail is simply not stored for them.)
            return "\r\n".join(refusals.get(r) or f"250 2.0.0 <{r}> Ok: queued as {queue_id}" for r in rcpts)
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _per_rcpt(self, rcpts: tuple[str, ...], line: str) -> str:
        return "\r\n".join(line for _ in rcpts) if self.lmtp else line

    async def handle_exception(self, error: Exception) -> str:
        log.error("intake.exception", error=repr(error))
        return "451 4.3.0 Internal error, try again later"


def _sender(mail_from: str | None) -> str:
    return "" if mail_from in (None, "", "<>") else str(mail_from)


def _peer_str(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "unix"


class _BusyProtocol(asyncio.Protocol):
    """Answers 421 and hangs up: the listener is at max_sessions or shutting down."""

    def __init__(self, hostname: str, text: str):
        self.line = f"421 4.3.2 {hostname} {text}\r\n".encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.line)
        transport.close()


def load_auth_users(path: Path) -> dict[str, str]:
    users = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, _, password = line.partition(":")
            users[user] = password
    return users


class _FileAuthenticator:
    def __init__(self, users: dict[str, str]):
        self.users = users

    def __call__(self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        import hmac

        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            expected = self.users.get(user)
            if expected is not None and hmac.compare_digest(expected.encode(), auth_data.password):
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)


def build_tls_context(listener: ListenerConfig) -> ssl.SSLContext | None:
    if listener.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(listener.tls.cert_file), str(listener.tls.key_file))
    return ctx


def _prepare_socket_path(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() and stat.S_ISSOCK(p.stat().st_mode):
        p.unlink()  # a stale socket from a previous run


class SmtpListener:
    """One bound listener (SMTP, LMTP or submission) and its live sessions."""

    def __init__(self, listener: ListenerConfig, *, spool: Spool, rcpt_check: RcptCheck, hostname: str | None = None,
                 on_stored: Callable[[Direction], None] | None = None, message_check: MessageCheck | None = None,
                 hold_check: HoldCheck | None = None, auth: AuthHooks | None = None):
        self.cfg = listener
        self.hostname = listener.hostname or hostname or default_hostname()
        direction = Direction.OUTBOUND if listener.kind == "submission" else Direction.INBOUND
        self.handler = IntakeHandler(spool=spool, listener=listener, hostname=self.hostname, rcpt_check=rcpt_check,
                                     direction=direction, on_stored=on_stored, message_check=message_check,
                                     hold_check=hold_check if direction == Direction.INBOUND else None,
                                     auth=auth if direction == Direction.INBOUND else None)
        self.tls_context = build_tls_context(listener)
        self.sessions: set[GatewaySMTP] = set()
        self.server: asyncio.Server | None = None
        self.closing = False
        self._auth_kwargs: dict[str, Any] = {}
        if listener.kind == "submission" and listener.auth is not None:
            self._auth_kwargs = {
                "authenticator": _FileAuthenticator(load_auth_users(listener.auth.users_file)),
                "auth_required": True,
                "auth_require_tls": self.tls_context is not None,
            }

    @property
    def address(self) -> str:
        """Where it actually listens ("host:port" with the real port when bound to port 0, or the socket path)."""
        if self.cfg.unix_path:
            return f"unix:{self.cfg.unix_path}"
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _factory(self) -> asyncio.Protocol:
        if self.closing:
            return _BusyProtocol(self.hostname, "Service shutting down, try again later")
        if len(self.sessions) >= self.cfg.max_sessions:
            log.warning("intake.too_many_sessions", listener=self.cfg.bind, limit=self.cfg.max_sessions)
            return _BusyProtocol(self.hostname, "Too many connections, try again later")
        cls = GatewayLMTP if self.cfg.kind == "lmtp" else GatewaySMTP
        proto = cls(self.handler, listener=self.cfg, hostname=self.hostname, tls_context=self.tls_context,
                    require_starttls=bool(self.cfg.tls and self.cfg.tls.required), on_lost=self.sessions.discard,
                    **self._auth_kwargs)
        self.sessions.add(proto)
        return proto

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.cfg.unix_path
        if path:
            _prepare_socket_path(Path(path))
            self.server = await loop.create_unix_server(self._factory, path=path, backlog=1024)
            os.chmod(path, self.cfg.socket_mode)
        else:
            host, port = self.cfg.host_port
            self.server = await loop.create_server(self._factory, host=host, port=port, backlog=1024,
                                                   reuse_address=True)
        log.info("intake.listening", kind=self.cfg.kind, address=self.address)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let DATA in progress finish (up to `grace` seconds); then say 421 to idle sessions."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        try:
            async with asyncio.timeout(grace):
                for session in list(self.sessions):
                    await session.data_idle.wait()
        except TimeoutError:
            log.warning("intake.drain_timeout", busy=sum(s.in_data for s in self.sessions))
        for s in list(self.sessions):
            transport = s.transport
            if not isinstance(transport, asyncio.WriteTransport):
                continue
            if not s.in_data:
                try:
                    transport.write(f"421 4.3.2 {self.hostname} Service shutting down\r\n".encode())
                except Exception:
                    pass
            transport.close()
        if self.cfg.unix_path:
            try:
                os.unlink(self.cfg.unix_path)
            except OSError:
                pass
        log.info("intake.stopped", kind=self.cfg.kind, address=self.cfg.bind)


def _quiet_sanitized_log(func: Callable[..., None], msg: Any, *args: Any, **kwargs: Any) -> None:
    """aiosmtpd sanitises every debug line before the logger decides to drop it; decide first."""
    if _MAIL_LOG.isEnabledFor(logging.DEBUG):
        _original_sanitized_log(func, msg, *args, **kwargs)


_MAIL_LOG = logging.getLogger("mail.log")
_original_sanitized_log = aiosmtpd.smtp.sanitized_log
aiosmtpd.smtp.sanitized_log = _quiet_sanitized_log
