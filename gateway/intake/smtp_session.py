"""How one SMTP or LMTP session lives and ends: `SmtpSession`, on top of aiosmtpd 1.4's protocol class.

aiosmtpd still provides STARTTLS, AUTH, HELP, NOOP and RSET; the commands that carry the envelope and the
message are in smtp_commands.py. Everything that decides how a session lives and ends is here, because
aiosmtpd's own loop could not be fixed from outside (issue 18):

- **One end.** `_run` is the session's only task and `_end` its only exit: timeout, limit, QUIT, peer close,
  error — each releases the timer and the transport in one place, and the listener's slot (`on_end`) once the
  socket is gone, so max_sessions bounds sockets too. A peer's EOF does not cancel the task (aiosmtpd did, so a
  client that half-closed after the final dot lost its reply): the task sees it on its next read, after the
  reply went out.
- **Hanging up without a reset.** Closing a socket with unread input makes the kernel answer RST and drop
  what is still in our send queue, so a client that pipelined past the point where we hung up, or reads late,
  lost our last replies and the 421 (and RFC 793 lets the client's stack flush what it had received). So
  `_hang_up` sends FIN after the reply and reads and discards what the client still sends until its EOF, for at
  most `_LINGER` seconds (Apache's lingering close); then the socket is closed anyway, so none waits for ever
  on a client that neither reads nor closes.
- **Deadlines, not idle timers.** A command line must arrive whole within `idle_timeout`; a DATA phase within
  `data_timeout` plus one second per `min_data_rate` octets received (Postfix's smtpd_min_data_rate model),
  so trickling a byte at a time cannot hold a session. Expiry answers `421 4.4.2` before closing. No deadline
  runs while the message is being stored: that wait is ours, not the client's.
- **Command lines** are read whole or not at all; an argument must be printable UTF-8 (non-ASCII only where
  SMTPUTF8 may allow it), else 501. Unknown commands and garbage lines: five, then 421. Nothing a client sends
  is echoed raw into a reply or a log line.
- **Refusals are counted, not logged each**: the first of each class (command and reply code) is logged, the
  counts go into one `intake.session_end` line.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Any, AnyStr

from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    SMTP,
    Session,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
)

from gateway.config import ListenerConfig
from gateway.intake.aiosmtpd_compat import auth_names, handler_hooks, hook_dir, smtp_methods
from gateway.intake.smtp_syntax import with_enhanced_code
from gateway.logs import get_logger, printable

log = get_logger("mailgw.intake")

# Longest command line read (RFC 5321 asks for 512; AUTH initial responses and long VERP paths need more).
_COMMAND_LINE_LIMIT = 2048
# Replies are small: wait for the socket only when the peer does not read (flow control kicks in).
_REPLY_BUFFER_LIMIT = 64 * 1024
_TOO_LONG = b"\n"  # _read_command's answer for a line over the limit (never a line: line ends are stripped)
# After we hang up: how long the client has to read our last reply and close its side (see _hang_up).
_LINGER = 2.0


class _Session(Session):
    """aiosmtpd's Session without the deprecation warning it logs on every successful AUTH."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class SmtpSession(SMTP):
    """A session's life: its task, deadlines, command loop and replies (the commands: smtp_commands.py)."""

    lmtp = False

    def __dir__(self) -> list[str]:
        return hook_dir(self, ("smtp_", "auth_"))

    def __init__(self, handler: Any, *, listener: ListenerConfig, hostname: str,
                 on_end: Callable[[SmtpSession], None] | None = None,
                 admit: Callable[[SmtpSession, Any], str | None] | None = None,
                 tls_context: ssl.SSLContext | None = None,
                 require_starttls: bool = False, authenticator: Any = None, auth_required: bool = False,
                 auth_require_tls: bool = True):
        # The state aiosmtpd 1.4's SMTP.__init__ sets up, with its per-connection introspection (dir,
        # inspect.getmembers, inspect.signature: a fifth of the CPU per message) replaced by per-class caches.
        self.listener_cfg = listener
        self.in_data = False
        self.data_idle = asyncio.Event()  # clear while a DATA is being read and stored: drain waits for it
        self.data_idle.set()
        self._on_end = on_end
        self._admit = admit
        self.client_address: str | None = None  # set by the listener when it counts this session for its client
        self.__ident__ = listener.banner
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=self.loop, limit=_COMMAND_LINE_LIMIT),
            client_connected_cb=self._cb_client_connected, loop=self.loop)
        self.event_handler = handler
        self.data_size_limit = listener.max_message_size
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = bool(tls_context and require_starttls)
        self._timeout_duration = listener.idle_timeout
        self._timeout_handle = None
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
                              for name, attr, own in auth_names(type(self), type(handler))}
        self._handle_hooks = handler_hooks(handler)
        self._ehlo_hook_ver = "new" if "EHLO" in self._handle_hooks else None
        self._smtp_methods = smtp_methods(self)
        self._enforce_call_limit = False
        # Ours: the deadline of what the session waits for, and what it says when it ends.
        self._deadline = math.inf
        self._timer_at = math.inf
        self._ended = False
        self._end_reason = ""
        self._peer_eof = False  # the client closed its side
        self._linger: asyncio.TimerHandle | None = None  # set once we hung up: the end of the wait for EOF
        self._command = ""  # the command being answered (refusals are counted by command and code)
        self._refused: Counter[str] = Counter()
        self._errors = 0  # refused commands so far (max_errors)
        self._error_limit: float = math.inf  # set at connection_made: SMTP and submission from untrusted clients
        self._detail: dict[str, str] = {}
        self._accepted = 0
        self._started = self.loop.time()
        self._held: list[bytes] = []  # continuation lines of the reply being pushed (see push)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _create_session(self) -> Session:
        return _Session(self.loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None and self.transport is not None:
            super().connection_made(transport)  # the TLS transport after STARTTLS: aiosmtpd swaps it in
            return
        self._set_rset_state()
        self.session = self._create_session()
        self.session.peer = transport.get_extra_info("peername")
        asyncio.StreamReaderProtocol.connection_made(self, transport)
        self.transport = transport
        refusal = self._admit(self, self.session.peer) if self._admit is not None else None
        if refusal is not None:
            # Turned away like a full listener: a plain close (the client waits for the greeting, so it has
            # sent nothing) and no task; connection_lost releases the slot.
            transport.write(refusal.format(host=self.hostname).encode() + b"\r\n")  # type: ignore[attr-defined]
            self._ended = True
            transport.close()
            return
        relays = getattr(self.event_handler, "relays", None)
        if not self.lmtp and not (relays is not None and relays.trusts(self.session.peer)):
            self._error_limit = self.listener_cfg.max_errors
        self._handler_coroutine = self.loop.create_task(self._run())

    async def _run(self) -> None:
        reason = "error"
        try:
            reason = await self._serve()
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        except ConnectionError:
            reason = "lost"
        except TLSSetupException:
            reason = "tls_failed"
        except Exception as exc:  # a bug: the client gets 421, not a silent hang-up, and the slot comes back
            log.error("intake.session_failed", peer=self.peer, error=repr(exc), exc_info=True)
            self.close_session("421 4.3.0 {host} Error: internal error, closing connection")
        finally:
            self._end(reason)

    def _end(self, reason: str) -> None:
        """The only way a session ends: timer, transport and slot released once, one line if worth one."""
        if self._ended:
            return
        self._ended = True
        reason = self._end_reason or reason
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        self._deadline = math.inf
        self._hang_up()
        self._release()
        if self._refused or reason not in ("quit", "eof", "lost", "drain"):
            log.info("intake.session_end", peer=self.peer, reason=reason, accepted=self._accepted,
                     refused=dict(self._refused), seconds=round(self.loop.time() - self._started, 3))

    def _release(self) -> None:
        """The listener's slot comes back when the session is over and its socket gone (a hang-up lingers)."""
        if self._ended and self.transport is None and self._on_end is not None:
            on_end, self._on_end = self._on_end, None
            on_end(self)

    def close_session(self, reply: str | None, reason: str | None = None) -> None:
        """Say `reply` (if the peer reads) and hang up; the task sees EOF on its next read and ends."""
        if reason and not self._end_reason:
            self._end_reason = reason
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return
        if reply is not None and transport.get_write_buffer_size() <= _REPLY_BUFFER_LIMIT:  # type: ignore[attr-defined]
            transport.write(reply.format(host=self.hostname).encode() + b"\r\n")  # type: ignore[attr-defined]
            self._hang_up()
        else:  # it does not read what we send: nothing more will reach it
            transport.abort()  # type: ignore[attr-defined]
        self._reader.feed_eof()

    def _hang_up(self) -> None:
        """Close our side once what we wrote is out, without a reset: FIN, then what the client still sends is
        read and dropped (data_received) until its EOF closes the socket (eof_received), or until `_LINGER`
        passes and it is closed anyway. TLS cannot half-close: close_notify and close."""
        transport = self.transport
        if transport is None or self._linger is not None:
            return
        self._linger = self.loop.call_later(_LINGER, transport.abort)  # type: ignore[attr-defined]
        if self._peer_eof or transport.is_closing() or not transport.can_write_eof():  # type: ignore[attr-defined]
            transport.close()
        else:
            transport.write_eof()  # type: ignore[attr-defined]
            transport.resume_reading()  # type: ignore[attr-defined]  # the reader may have paused it when full

    def data_received(self, data: bytes) -> None:
        if self._linger is not None:
            return  # we hung up: read only so that closing does not reset the connection
        super().data_received(data)

    def connection_lost(self, error: Exception | None) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
            self._timeout_handle = None
        if self._linger is not None:
            self._linger.cancel()
        if self._original_transport is not None:  # after STARTTLS: close the socket under the TLS layer too
            self._original_transport.close()
        # The reader sees EOF (or the error), a pending drain its error, a TLS handshake its waiter's error: the
        # task ends by itself, after storing a message whose final dot had arrived. Nothing is cancelled.
        asyncio.StreamReaderProtocol.connection_lost(self, error)
        closed: asyncio.Future[None] = self._closed  # type: ignore[attr-defined]
        if closed.done() and not closed.cancelled():
            closed.exception()  # retrieved: nobody awaits it, and asyncio would log it at collection
        self.transport = None
        task = self._handler_coroutine
        if task is None or task.done():
            self._end("eof")
        self._release()

    def eof_received(self) -> bool | None:
        # Feed EOF to the reader and keep our side open: the reply to a message whose final dot came with the
        # EOF still goes out. (TLS cannot half-close: False.) After we hung up, both sides are done: close.
        self._peer_eof = True
        asyncio.StreamReaderProtocol.eof_received(self)
        return self._linger is None and (self.session is None or self.session.ssl is None)

    # -- deadlines ---------------------------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        """The next wait (a command line, a reply) must be over within `seconds`."""
        self._set_deadline(self.loop.time() + seconds)

    def _set_deadline(self, at: float) -> None:
        self._deadline = at
        if self._ended or at == math.inf:
            return
        if self._timeout_handle is not None and at < self._timer_at:
            self._timeout_handle.cancel()  # the deadline moved before the timer
            self._timeout_handle = None
        if self._timeout_handle is None:
            self._timer_at = at
            self._timeout_handle = self.loop.call_at(at, self._check_deadline)

    def _check_deadline(self) -> None:
        # One timer per session, re-armed only when it fires: moving a deadline later costs nothing per command.
        self._timeout_handle = None
        if self._ended or self._deadline == math.inf:
            return
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_deadline)
            return
        self.close_session("421 4.4.2 {host} Error: timeout exceeded", "timeout")

    def _reset_timeout(self, duration: float | None = None) -> None:  # aiosmtpd calls it after STARTTLS
        self._arm(duration or self._timeout_duration)

    def _timeout_cb(self) -> None:
        self.close_session("421 4.4.2 {host} Error: timeout exceeded", "timeout")

    # -- the command loop --------------------------------------------------------------------------------

    async def _serve(self) -> str:
        self._arm(self._timeout_duration)
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus = BOGUS_LIMIT
        while self.transport is not None:
            self._arm(self._timeout_duration)
            line = await self._read_command()
            if line is None:
                return "eof"
            self._detail = {}  # what a refusal of this command logs besides the reply (sender, recipient)
            if line == _TOO_LONG:
                self._command = "long"
                await self.push("500 5.5.2 Error: command line too long")
                continue
            command_bytes, _, arg_bytes = line.partition(b" ")
            command = command_bytes.upper().decode("ascii") if command_bytes.isalpha() else ""
            method = self._smtp_methods.get(command) if 0 < len(command) <= 16 else None
            if method is None:
                # Unknown commands and garbage lines (an HTTP request, a binary probe): a few, then goodbye.
                self._command = "unknown"
                bogus -= 1
                if bogus < 1:
                    self._note_refusal("421")
                    self.close_session("421 4.7.0 {host} Error: too many unrecognized commands", "unknown_commands")
                    return "unknown_commands"
                await self.push("500 5.5.2 Error: command not recognized")
                continue
            self._command = command
            arg = self._argument(command, arg_bytes.strip(b" \t"))
            if arg is False:
                await self.push("501 5.5.2 Syntax error: argument not in UTF-8 or has control characters")
                continue
            if not self._tls_handshake_okay and command != "QUIT":
                await self.push("554 5.7.0 Command refused due to lack of security")
                continue
            if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
                await self.push("530 5.7.0 Must issue a STARTTLS command first")
                continue
            try:
                await method(arg or None)
            except (ConnectionError, TLSSetupException, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.error("intake.command_failed", peer=self.peer, command=command, error=repr(exc), exc_info=True)
                await self.push(await self.handle_exception(exc))
            if self._end_reason:
                return self._end_reason
            if self._errors >= self._error_limit:
                self.close_session("421 4.7.0 {host} Error: too many errors", "too_many_errors")
                return "too_many_errors"
        return "eof"

    async def _read_command(self) -> bytes | None:
        """One command line without its line end; _TOO_LONG for a line over the limit; None at EOF."""
        reader = self._reader
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None  # EOF (a partial line without its end is not a command)
        except asyncio.LimitOverrunError as exc:
            await reader.read(exc.consumed)  # drop it up to its end, under the same deadline
            while True:
                try:
                    await reader.readuntil(b"\n")
                    return _TOO_LONG
                except asyncio.LimitOverrunError as more:
                    await reader.read(more.consumed)
                except asyncio.IncompleteReadError:
                    return None
        except (ConnectionError, OSError):
            return None
        return line.rstrip(b"\r\n")

    def _argument(self, command: str, raw: bytes) -> str | bool:
        """The argument as text: printable, UTF-8 (decoded strictly: nothing undecodable travels further), and
        non-ASCII only where SMTPUTF8 may allow it (the command then decides). False: refuse with 501."""
        if raw.isascii():
            text = raw.decode("ascii")
            return text if text.isprintable() else False
        if command not in ("MAIL", "RCPT", "VRFY", "EXPN"):
            return False
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return text if text.isprintable() else False

    @property
    def peer(self) -> str:
        peer = self.session.peer if self.session is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer) if peer else "unix"

    # -- replies -----------------------------------------------------------------------------------------

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if status[:1] in ("4", "5"):
                self._note_refusal(status)
            data = with_enhanced_code(status).encode("utf-8") + b"\r\n"
        else:
            data = status + b"\r\n"
        if data[3:4] == b"-":
            # A continuation line ("250-PIPELINING"): aiosmtpd pushes a multi-line reply line by line, and each
            # write is a send() syscall. Hold it until the reply's last line, so EHLO costs one syscall, not ten.
            self._held.append(data)
            return
        if self._held:
            self._held.append(data)
            data = b"".join(self._held)
            self._held.clear()
        transport = self.transport
        if transport is None or transport.is_closing() or self._linger is not None:
            return  # the peer is gone (or we hung up): nobody reads it
        transport.write(data)  # type: ignore[attr-defined]
        if transport.get_write_buffer_size() > _REPLY_BUFFER_LIMIT:  # type: ignore[attr-defined]
            await self._writer.drain()

    async def _push_lines(self, lines: list[str]) -> None:
        """Several complete replies in one write (LMTP's per-recipient answers after DATA)."""
        for line in lines[:-1]:
            if line[:1] in ("4", "5"):
                self._note_refusal(line)
            self._held.append(with_enhanced_code(line).encode("utf-8") + b"\r\n")
        await self.push(lines[-1])

    def _note_refusal(self, reply: str) -> None:
        if reply[:1] == "5":  # the client's errors; 4xx are ours or limits it may overshoot (452 too many rcpts)
            self._errors += 1
        key = f"{self._command or 'session'} {reply[:3]}"
        self._refused[key] += 1
        if self._refused[key] == 1:  # the first of its class in this session; the count comes at its end
            log.info("intake.refused", peer=self.peer, command=self._command, reply=printable(reply),
                     **self._detail)

    async def handle_exception(self, error: Exception) -> str:
        return "451 4.3.0 Internal error, try again later"
