"""SMTP, LMTP and submission listeners: the handler that checks and stores, and the listener that binds.

The session itself is `GatewaySMTP`: how it lives and ends in smtp_session.py, its commands in smtp_commands.py.
Here: `IntakeHandler` (recipient checks at RCPT, the spool at DATA, the durable 250) and `SmtpListener` (the
socket, its session slots, 421 past `max_sessions`, drain). The reply after DATA is sent only once the spool's
commit returned (the spool fsyncs; see spool/sqlite.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from gateway.config import ListenerConfig
from gateway.headers import extract_message_id
from gateway.host import default_hostname
from gateway.intake import xforward
from gateway.intake.aiosmtpd_compat import hook_dir
from gateway.intake.smtp_commands import GatewayLMTP, GatewaySMTP
from gateway.intake.smtp_session import SmtpSession
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


class IntakeHandler:
    """aiosmtpd handler: recipient checks at RCPT, spool at DATA, durable 250."""

    def __dir__(self) -> list[str]:
        return hook_dir(self, ("handle_", "auth_"))

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
        self.relays = xforward.TrustedRelays(listener.trusted_relays)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: SmtpEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # PIPELINING and ENHANCEDSTATUSCODES are what aiosmtpd does but does not say.
        last = responses.pop()
        responses.extend(["250-PIPELINING", "250-ENHANCEDSTATUSCODES", last])
        if self.relays.trusts(session.peer):
            responses.insert(-1, f"250-{xforward.KEYWORD}")
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
        refusal = self.rcpt_check(address, _sender(envelope.mail_from), _peer_str(session.peer))
        if refusal is not None:
            return refusal  # logged by the session, once per kind of refusal (see GatewaySMTP._note_refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str | list[str]:
        """The answer after DATA: one line for the message, or (LMTP) one per recipient accepted at RCPT. A
        single line is repeated per recipient by the session for LMTP, so a message-level check added here
        returns one line."""
        raw = envelope.original_content
        assert isinstance(raw, bytes)
        rcpts = tuple(envelope.rcpt_tos)
        refusals: dict[str, str] = {}
        if self.message_check is not None:
            answers = self.message_check(raw, rcpts)
            refusals = {r: a for r, a in zip(rcpts, answers, strict=True) if a is not None}
            if len(refusals) == len(rcpts):
                return [refusals[r] for r in rcpts] if self.lmtp else refusals[rcpts[0]]
        auth = await self.auth.on_data(session, envelope, raw, [r for r in rcpts if r not in refusals]) \
            if self.auth is not None else None
        if auth is not None and auth.refusals:
            # LMTP answers each recipient; SMTP has one answer, so one refusal refuses the message (a 5xx before
            # a 4xx) rather than silently dropping some recipients after a 250.
            refusals.update(auth.refusals)
            line = min(auth.refusals.values(), key=lambda x: x[0] != "5")
            if len(refusals) == len(rcpts) or not self.lmtp:
                log.info("intake.auth_refused", peer=_peer_str(session.peer), reply=line)
                return [refusals.get(r, line) for r in rcpts] if self.lmtp else line
        accepted = tuple(r for r in rcpts if r not in refusals)
        env = Envelope(
            mail_from=_sender(envelope.mail_from),
            rcpt_tos=accepted,
            intake=self.listener.kind,
            peer=_peer_str(session.peer),
            helo=session.host_name,
            received_at=time.time(),
            source={**({"tls": True} if session.ssl else {}), **({"auth": auth.summary} if auth else {})} or None,
            client=xforward.client_of(envelope),
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
            return "451 4.3.0 Temporary failure, message not stored; try again later"
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
            return [refusals.get(r) or f"250 2.0.0 <{r}> Ok: queued as {queue_id}" for r in rcpts]
        return f"250 2.0.0 Ok: queued as {queue_id}"


def _sender(mail_from: str | None) -> str:
    return "" if mail_from in (None, "", "<>") else str(mail_from)


def _peer_str(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) if peer else "unix"


class _BusyProtocol(asyncio.Protocol):
    """Answers 421 and hangs up: the listener is at max_sessions or shutting down. (Duck-typed: uvloop's
    transports are not asyncio.WriteTransport subclasses.)"""

    def __init__(self, hostname: str, text: str):
        self.line = f"421 4.3.2 {hostname} {text}\r\n".encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            transport.write(self.line)  # type: ignore[attr-defined]
        except (OSError, RuntimeError):  # already reset by the peer
            pass
        # A plain close, not the session's lingering hang-up: a client that waits for the greeting (RFC 5321
        # §3.1) has sent nothing, so this is a FIN; lingering would let a flood hold sockets past max_sessions.
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


def bound_address(cfg: ListenerConfig, server: asyncio.Server | None) -> str:
    """Where a listener actually listens ("host:port" with the real port when bound to port 0, or the socket path)."""
    if cfg.unix_path:
        return f"unix:{cfg.unix_path}"
    assert server is not None
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"


def prepare_socket_path(p: Path) -> None:
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
        self.sessions: set[SmtpSession] = set()
        self.server: asyncio.Server | None = None
        self.closing = False
        self._turned_away = 0  # connections refused since the listener filled up
        self._per_client: Counter[str] = Counter()  # live sessions per client address (max_sessions_per_client)
        self._over_limit: set[str] = set()  # clients told "too many connections" since they last were under it
        self._all_ended = asyncio.Event()
        self._all_ended.set()
        self._auth_kwargs: dict[str, Any] = {}
        if listener.kind == "submission" and listener.auth is not None:
            self._auth_kwargs = {
                "authenticator": _FileAuthenticator(load_auth_users(listener.auth.users_file)),
                "auth_required": True,
                "auth_require_tls": self.tls_context is not None,
            }

    @property
    def address(self) -> str:
        return bound_address(self.cfg, self.server)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def _factory(self) -> asyncio.Protocol:
        if self.closing:
            return _BusyProtocol(self.hostname, "Service shutting down, try again later")
        if len(self.sessions) >= self.cfg.max_sessions:
            self._turned_away += 1
            if self._turned_away == 1:  # one line when the listener fills up, not one per connection
                log.warning("intake.too_many_sessions", listener=self.cfg.bind, limit=self.cfg.max_sessions)
            return _BusyProtocol(self.hostname, "Too many connections, try again later")
        cls = GatewayLMTP if self.cfg.kind == "lmtp" else GatewaySMTP
        proto = cls(self.handler, listener=self.cfg, hostname=self.hostname, tls_context=self.tls_context,
                    require_starttls=bool(self.cfg.tls and self.cfg.tls.required), on_end=self._session_ended,
                    admit=self._admit, **self._auth_kwargs)
        self.sessions.add(proto)
        self._all_ended.clear()
        return proto

    def _admit(self, session: SmtpSession, peer: Any) -> str | None:
        """Called once the client's address is known: None to serve it, or the 421 that turns it away because
        it already holds max_sessions_per_client sessions (one host must not take every slot). Trusted relays
        (Postfix in front: every client arrives from its address) and unix-socket clients are not counted."""
        if not (isinstance(peer, tuple) and peer) or self.handler.relays.trusts(peer):
            return None
        client = str(peer[0])
        if self._per_client[client] >= self.cfg.client_limit:
            if client not in self._over_limit:  # one line per client while it stays over, not one per connection
                self._over_limit.add(client)
                log.warning("intake.client_limit", listener=self.cfg.bind, client=client, limit=self.cfg.client_limit)
            return "421 4.7.0 {host} Error: too many connections from your address, try again later"
        self._per_client[client] += 1
        session.client_address = client
        return None

    def _session_ended(self, session: SmtpSession) -> None:
        self.sessions.discard(session)
        client = session.client_address
        if client is not None:
            self._per_client[client] -= 1
            if self._per_client[client] <= 0:
                del self._per_client[client]
            if client in self._over_limit and self._per_client[client] < self.cfg.client_limit:
                self._over_limit.discard(client)
        if self._turned_away and len(self.sessions) < self.cfg.max_sessions:
            log.info("intake.sessions_available", listener=self.cfg.bind, turned_away=self._turned_away)
            self._turned_away = 0
        if not self.sessions:
            self._all_ended.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        path = self.cfg.unix_path
        if path:
            prepare_socket_path(Path(path))
            self.server = await loop.create_unix_server(self._factory, path=path, backlog=1024)
            os.chmod(path, self.cfg.socket_mode)
        else:
            host, port = self.cfg.host_port
            self.server = await loop.create_server(self._factory, host=host, port=port, backlog=1024,
                                                   reuse_address=True)
        log.info("intake.listening", kind=self.cfg.kind, address=self.address)

    async def drain(self, grace: float) -> None:
        """Stop accepting; let DATA in progress finish (up to `grace` seconds); then say 421 to the others."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        try:
            async with asyncio.timeout(grace):
                for session in list(self.sessions):
                    await session.data_idle.wait()
        except TimeoutError:
            log.warning("intake.drain_timeout", busy=sum(s.in_data for s in self.sessions))
        for session in list(self.sessions):
            session.close_session(None if session.in_data else "421 4.3.2 {host} Service shutting down", "drain")
        # The sessions end on their own once they see the close; wait for that, briefly, so no task outlives us.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._all_ended.wait()
        if self.cfg.unix_path:
            try:
                os.unlink(self.cfg.unix_path)
            except OSError:
                pass
        log.info("intake.stopped", kind=self.cfg.kind, address=self.cfg.bind)
