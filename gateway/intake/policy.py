"""A Postfix SMTP access policy service: Postfix asks the gateway about every RCPT, answered from the live directory.

Postfix's smtpd (``check_policy_service unix:mailgw/policy.sock`` in smtpd_recipient_restrictions; the protocol is
Postfix's SMTPD_POLICY_README) sends one request per RCPT on a connection it keeps open: ``name=value`` lines
ended by an empty line. The answer is one ``action=...`` line and an empty line.

Why a policy service rather than a socketmap for relay_recipient_maps (docs/postfix.md says the same to users):
it sees the sender too, so the loop guard refuses at Postfix's door as it does at ours (451 4.7.1); it answers
our own reply line — 550 5.1.1 for an unknown alias, 451 4.3.0 while the gateway has no directory yet (a table
lookup can only say "not found" or fail) — and "DUNNO" for domains that are not ours, so it never takes part in
Postfix's relay decisions. Nothing is cached on either side: an alias created in Odoo is accepted as soon as the
directory refresh has seen it. When the gateway is down Postfix applies smtpd_policy_service_default_action
(451 4.3.5 by default): mail waits at the sender, never bounced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from gateway.admission import AdmissionPolicy, domain_of
from gateway.config import ListenerConfig
from gateway.intake.smtp import bound_address, prepare_socket_path
from gateway.logs import get_logger

log = get_logger("mailgw.intake")

_MAX_REQUEST = 64 * 1024  # Postfix's requests are a few hundred octets; certificates can add some


def parse_request(block: bytes) -> dict[str, str]:
    """``name=value`` lines (the trailing empty line included) -> dict; later duplicates win, junk is skipped."""
    attrs: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").splitlines():
        name, eq, value = line.partition("=")
        if eq:
            attrs[name.strip()] = value
    return attrs


def decide(attrs: dict[str, str], admission: AdmissionPolicy) -> str:
    """The action for one request: DUNNO (no opinion: Postfix's other restrictions decide) or a reply line."""
    if attrs.get("request") != "smtpd_access_policy" or attrs.get("protocol_state", "").upper() != "RCPT":
        return "DUNNO"
    rcpt = attrs.get("recipient", "")
    if "@" not in rcpt or domain_of(rcpt) not in admission.domains or admission.precheck is None:
        return "DUNNO"  # not one of our domains: relaying is Postfix's decision, not ours
    refusal = admission.precheck(rcpt, attrs.get("sender", ""))
    return "DUNNO" if refusal is None else refusal


class PolicyListener:
    """`kind: policy` listener: a unix socket (or host:port) Postfix's smtpd keeps connections open to."""

    def __init__(self, cfg: ListenerConfig, admission: AdmissionPolicy):
        self.cfg = cfg
        self.admission = admission
        self.server: asyncio.Server | None = None
        self.sessions: set[asyncio.StreamWriter] = set()
        self.answered = 0

    @property
    def address(self) -> str:
        return bound_address(self.cfg, self.server)

    async def start(self) -> None:
        path = self.cfg.unix_path
        if path:
            prepare_socket_path(Path(path))
            self.server = await asyncio.start_unix_server(self._session, path=path, limit=_MAX_REQUEST)
            os.chmod(path, self.cfg.socket_mode)
        else:
            host, port = self.cfg.host_port
            self.server = await asyncio.start_server(self._session, host=host, port=port, limit=_MAX_REQUEST,
                                                     reuse_address=True)
        log.info("intake.listening", kind="policy", address=self.address)

    async def drain(self, grace: float) -> None:
        """Stop accepting and close the open connections: Postfix reconnects, or applies its default action."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.sessions):
            writer.close()
        if self.cfg.unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self.cfg.unix_path)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.sessions) >= self.cfg.max_sessions:
            log.warning("intake.too_many_sessions", listener=self.cfg.bind, limit=self.cfg.max_sessions)
            writer.close()
            return
        self.sessions.add(writer)
        try:
            while True:
                block = await asyncio.wait_for(reader.readuntil(b"\n\n"), self.cfg.idle_timeout)
                attrs = parse_request(block)
                action = self._action(attrs)
                writer.write(f"action={action}\n\n".encode())
                await writer.drain()
                self.answered += 1
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass  # Postfix closed an idle connection, or went quiet past idle_timeout
        except asyncio.LimitOverrunError:
            log.warning("policy.request_too_long", limit=_MAX_REQUEST)
        finally:
            self.sessions.discard(writer)
            writer.close()

    def _action(self, attrs: dict[str, str]) -> str:
        try:
            action = decide(attrs, self.admission)
        except Exception as exc:  # a bug here must not turn into a 5xx at Postfix's door
            log.error("policy.failed", error=repr(exc))
            return "451 4.3.0 Internal error, try again later"
        if action != "DUNNO":
            # Postfix logs its own "NOQUEUE: reject" line with the client; ours is for debugging only.
            log.debug("policy.refused", rcpt=attrs.get("recipient"), sender=attrs.get("sender"),
                      client=attrs.get("client_address"), reply=action)
        return action
