"""The sockets the gateway listens on: SMTP, LMTP, submission and Postfix policy listeners."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from gateway.config.types import (
    Duration,
    FileMode,
    Model,
    Size,
    check_bind,
    parse_duration,
    parse_size,
    split_host_port,
)


class TlsConfig(Model):
    cert_file: Path
    key_file: Path
    # Refuse MAIL before STARTTLS (submission from Odoo over a network should set this).
    required: bool = False


class AuthConfig(Model):
    """SMTP AUTH for the submission listener: a file of ``user:password`` lines (one per line)."""

    users_file: Path


def _listener_bind(value: str) -> str:
    if value.startswith("unix:"):
        if len(value) <= 5:
            raise ValueError("unix: needs a path")
        return value
    return check_bind(value)


class ListenerConfig(Model):
    # policy: Postfix's check_policy_service asks it about every RCPT (gateway/intake/policy.py)
    kind: Literal["smtp", "lmtp", "submission", "policy"]
    bind: Annotated[str, AfterValidator(_listener_bind)] = Field(
        description='"host:port", "[IPv6]:port" or, for LMTP and policy, "unix:/path/to/socket"')
    hostname: str | None = None  # name in the banner and EHLO; default: the machine's FQDN
    banner: str = "ESMTP ready"  # never a version string
    max_message_size: Size = parse_size("25MiB")
    max_recipients: int = Field(100, ge=1)
    max_line_length: int = Field(65536, ge=1000)  # RFC 5321 needs 1000; longer DATA lines are refused
    # Deadlines (Postfix's per-request deadline model): a command line must arrive whole within idle_timeout; a
    # DATA phase within data_timeout plus one second per min_data_rate octets received. Trickling bytes does
    # not extend either. The client hears "421 4.4.2 ... timeout exceeded" when one passes.
    idle_timeout: Duration = Field(parse_duration("5m"), gt=0)
    data_timeout: Duration = Field(parse_duration("5m"), gt=0)
    min_data_rate: Size = Field(500, ge=1)  # octets per second
    max_sessions: int = Field(500, ge=1)
    # Concurrent sessions from one client address (Postfix's smtpd_client_connection_count_limit), so one host
    # cannot take every slot; trusted_relays and unix-socket clients are not limited. Default: max_sessions / 10,
    # at least 10. More get "421 4.7.0 ... too many connections from your address".
    max_sessions_per_client: int | None = Field(None, ge=1)
    # Refused commands (5xx replies) one SMTP or submission session may collect before it is told
    # "421 4.7.0 ... too many errors" and hung up (Postfix's smtpd_hard_error_limit): a dictionary attack or a
    # confused client ends there. Not applied to LMTP nor to trusted_relays (Postfix's transactions may refuse
    # many recipients legitimately).
    max_errors: int = Field(20, ge=1)
    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    socket_mode: FileMode = 0o660  # for unix sockets (Postfix's lmtp client must reach it)
    # Whose XFORWARD (the original client's address, name, HELO and protocol, sent by Postfix with
    # lmtp_send_xforward_command / smtp_send_xforward_command) is believed: CIDRs on a TCP listener, "unix" on a
    # unix socket (whoever may open it). Empty: XFORWARD is neither offered nor accepted.
    trusted_relays: list[str] = []

    @model_validator(mode="after")
    def _check_bind(self) -> ListenerConfig:
        if self.bind.startswith("unix:") and self.kind not in ("lmtp", "policy"):
            raise ValueError(f"bind {self.bind!r}: unix: sockets are only for kind: lmtp and kind: policy")
        return self

    @model_validator(mode="after")
    def _check_relays(self) -> ListenerConfig:
        if self.kind == "policy" and (self.tls or self.auth or self.trusted_relays):
            raise ValueError("a policy listener takes no tls, auth or trusted_relays")
        for entry in self.trusted_relays:
            if entry == "unix":
                if not self.bind.startswith("unix:"):
                    raise ValueError('trusted_relays: "unix" is for a listener bound to a unix: socket')
                continue
            if self.bind.startswith("unix:"):
                raise ValueError(f'trusted_relays: {entry!r}: a unix: socket has no peer address (use "unix")')
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f'trusted_relays: {entry!r} is neither "unix" nor an address or CIDR') from None
        return self

    @property
    def client_limit(self) -> int:
        return self.max_sessions_per_client or max(10, self.max_sessions // 10)

    @property
    def unix_path(self) -> str | None:
        return self.bind[5:] if self.bind.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.bind, any_port=True)
