"""Mail from Odoo to the world: relay or MX, DKIM keys, destinations and their limits, MTA-STS, TLS reports."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gateway.config.types import (
    Duration,
    Host,
    Model,
    Nameserver,
    Port,
    Rate,
    SecretHolder,
    parse_duration,
    parse_rate,
)


class DkimConfig(Model):
    """One signing key. Two entries for one domain (an RSA and an Ed25519 key, RFC 8463) sign every message
    twice; receivers use the signature they can verify."""

    domain: str
    selector: str
    key_file: Path
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"



class RelayConfig(SecretHolder):
    host: Host
    port: Port = 25
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # trust anchors for the relay's certificate (default: the system's)
    concurrency: int = Field(10, ge=1, le=1000)  # SMTP sessions to the relay at once
    rate: Rate | None = None  # messages per second the relay takes (e.g. "14/s", "30/m"); None: no limit


class DestinationConfig(Model):
    """Limits for mail to one destination: recipient `domains`, and/or domains whose MX host names end in one
    of `mx` (``google.com`` covers every Google Workspace domain). Built-in entries for the big providers
    (gateway/outbound/destinations.py) take the keys an entry of the same name sets."""

    domains: list[str] = []
    mx: list[str] = []
    concurrency: int = Field(10, ge=1, le=1000)  # SMTP sessions at once
    rate: Rate | None = None  # messages per second at most; None: only the adaptive limit after throttling


class SessionReuseConfig(Model):
    """One SMTP session carries several messages to the same host (RSET before each reuse)."""

    max_messages: int = Field(100, ge=1)
    max_age: Duration = parse_duration("5m")
    idle_timeout: Duration = parse_duration("10s")


class ThrottleConfig(Model):
    """What a 421 or 4.7.x "slow down" reply does to a destination (AIMD): the rate is multiplied by `decrease`,
    the sessions halved, and no new session opens for `pause`; then every minute without such a reply gives back
    `increase` of the rate it had when throttled (and one session), up to the configured limits. A destination
    without a configured rate drops its learned limit after `forget` without a throttling reply."""

    decrease: float = Field(0.5, gt=0, lt=1)
    increase: float = Field(0.1, gt=0)
    pause: Duration = parse_duration("60s")
    min_rate: Rate = parse_rate("1/m")
    forget: Duration = parse_duration("1h")


class MtaStsConfig(Model):
    enabled: bool = True  # direct MX delivery only; a relay applies its own policy
    https_port: int = Field(443, ge=1, le=65535)  # of the policy host (tests use another)
    ca_file: Path | None = None  # trust anchors for policy hosts and MX certificates (default: the system's)
    timeout: Duration = parse_duration("20s")  # policy fetch (RFC 8461 §3.3 suggests a minute at most)


class TlsReportConfig(Model):
    enabled: bool = True  # count TLS successes/failures per policy domain (RFC 8460), one file per day
    organization: str | None = None  # organization-name in the reports (default: outbound.helo_name)
    contact: str | None = None  # contact-info, e.g. mailto:postmaster@example.com


class OutboundConfig(Model):
    relay: RelayConfig | None = None  # None: deliver to the recipients' MX
    dkim: list[DkimConfig] = []
    concurrency: int = Field(20, ge=1, le=512)  # messages in delivery at once
    retry_initial: Duration = parse_duration("5m")
    retry_max: Duration = parse_duration("2h")
    lifetime: Duration = parse_duration("5d")
    helo_name: str | None = None  # EHLO, Received, DSNs and generated Message-Ids (default: the machine's FQDN)
    smtp_port: Port = 25  # port of the recipients' MX hosts (tests use another)
    # Resolvers for MX lookups, "host" or "host:port" (empty: the system's /etc/resolv.conf).
    nameservers: list[Nameserver] = []
    timeout: Duration = parse_duration("5m")  # per SMTP command (RFC 5321 §4.5.3.2)
    connect_timeout: Duration = parse_duration("30s")
    sessions: SessionReuseConfig = SessionReuseConfig()
    destinations: dict[str, DestinationConfig] = {}  # name -> limits ("default": every other domain)
    throttle: ThrottleConfig = ThrottleConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    tls_reports: TlsReportConfig = TlsReportConfig()
