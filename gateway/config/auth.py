"""Sender authentication (SPF, DKIM, DMARC, ARC) and what each Odoo instance does with its verdicts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.config.types import (
    Duration,
    Model,
    parse_duration,
)

AuthAction = Literal["refuse", "hold", "tag"]
Intake = Literal["smtp", "lmtp", "pipe", "imap", "pop3"]


class SenderPolicyConfig(Model):
    """What one Odoo instance does with mail its From domain did not authenticate (docs/authentication.md).
    refuse: 550 5.7.1 at the end of DATA (held instead when the mail was already accepted); hold: kept in the
    spool as `held` for an operator; tag: delivered with the verdict in Authentication-Results."""

    dmarc_reject: AuthAction = "refuse"  # DMARC fails and the domain publishes p=reject (pct applied)
    dmarc_quarantine: AuthAction = "hold"  # ... p=quarantine
    temperror: Literal["tempfail", "tag"] = "tempfail"  # 451 4.7.0, or deliver tagged; never a refusal
    internal_users: AuthAction = "hold"  # From is the address of an internal user of this instance
    partners: AuthAction = "tag"  # to an alias whose contact policy is partners or followers
    replies: AuthAction = "tag"  # a reply (or update) posted on an existing record


class SenderAuthConfig(Model):
    """Sender authentication at intake: SPF, DKIM, DMARC, ARC; Authentication-Results for Odoo."""

    enabled: bool = False
    authserv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")  # default: the host name
    nameservers: list[str] = []  # "host" or "host:port"; empty: the system's resolver
    dns_timeout: Duration = parse_duration("5s")  # one DNS query
    timeout: Duration = parse_duration("20s")  # a whole message's checks, from the end of DATA
    dns_cache_size: int = Field(10000, ge=0)
    # MTAs in front (Postfix): their own address is never judged; the client is taken from XFORWARD or from
    # the Received header they add. Addresses or networks.
    trusted_relays: list[str] = []
    trusted_arc_sealers: list[str] = []  # ARC-Seal d= domains whose recorded results are believed
    intakes: list[Intake] = ["smtp", "lmtp", "pipe"]
    held_lifetime: Duration = parse_duration("14d")  # held mail older than this is deleted (logged)

    @model_validator(mode="after")
    def _check_relays(self) -> SenderAuthConfig:
        import ipaddress

        for item in self.trusted_relays:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"trusted_relays: {item!r} is not an address or network") from None
        return self
