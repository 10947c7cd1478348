"""`Config`, the whole of config.yaml, with the small sections only it holds (logging, metrics, dns_check)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from gateway.config.auth import SenderAuthConfig
from gateway.config.listeners import ListenerConfig
from gateway.config.mailboxes import ImapConfig, Pop3Config
from gateway.config.odoo import BounceConfig, DeliveryConfig, OdooConfig, RoutingConfig
from gateway.config.outbound import OutboundConfig
from gateway.config.spool import SpoolConfig
from gateway.config.types import (
    ConfigError,
    Duration,
    HostPort,
    Model,
    Nameserver,
    parse_duration,
    resolve_secret,
)


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsConfig(Model):
    bind: HostPort | None = None  # "127.0.0.1:9925" serves /metrics and /healthz


class DnsCheckConfig(Model):
    interval: Duration | None = None  # periodic dns-check inside the daemon (None: off)
    nameservers: list[Nameserver] = []  # "host" or "host:port"; empty: the system's resolver
    selector: str | None = None
    ip: str | None = None
    expect_mx: list[str] = []


class Config(Model):
    state_dir: Path = Path("./var")
    listeners: list[ListenerConfig] = []
    odoo: list[OdooConfig] = []
    spool: SpoolConfig = SpoolConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    routing: RoutingConfig = RoutingConfig()
    bounce: BounceConfig = BounceConfig()
    outbound: OutboundConfig = OutboundConfig()
    imap: list[ImapConfig] = []
    pop3: list[Pop3Config] = []
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    dns_check: DnsCheckConfig = DnsCheckConfig()
    auth: SenderAuthConfig = SenderAuthConfig()
    drain_timeout: Duration = parse_duration("30s")

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [o.name for o in self.odoo]
        if len(set(names)) != len(names):
            raise ValueError("odoo instance names must be unique")
        owner: dict[str, str] = {}
        for inst in self.odoo:
            for dom in inst.domains:
                if dom in owner:
                    raise ValueError(f"domain {dom} belongs to both {owner[dom]} and {inst.name}")
                owner[dom] = inst.name
        for mbox in [*self.imap, *self.pop3]:
            if mbox.instance is not None and mbox.instance not in names:
                raise ValueError(f"mailbox {mbox.name}: unknown odoo instance {mbox.instance!r}")
        return self

    @property
    def spool_path(self) -> Path:
        return self.spool.path or (self.state_dir / "spool.sqlite3")

    @functools.cached_property
    def domain_owner(self) -> dict[str, str]:
        """Mail domain -> the name of the Odoo instance it belongs to (domains are stored lower-case)."""
        return {dom: inst.name for inst in self.odoo for dom in inst.domains}

    def instance_for_domain(self, domain: str) -> OdooConfig | None:
        name = self.domain_owner.get(domain.lower().rstrip("."))
        return self.instance(name) if name is not None else None

    def instance(self, name: str) -> OdooConfig:
        for inst in self.odoo:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def secret_problems(self) -> list[str]:
        """One line per secret the config names that cannot be read now, and what will not work without it (the
        values are never returned). Not config errors: the daemon runs without them and says so at start;
        `check-config` prints them as warnings. (VERP has its own: `bounce.verp_warning()`.)"""
        out: list[str] = []

        def check(read: Any, consequence: str) -> None:
            try:
                read()
            except ConfigError as exc:
                out.append(f"{'; '.join(exc.errors)}: {consequence}")

        for inst in self.odoo:
            check(inst.password, f"nothing can be delivered to Odoo instance {inst.name} and its aliases cannot be "
                  "read; its mail waits in the spool (deferred, never bounced), and without a cached alias "
                  "directory RCPT is answered 451")
        for box in [*self.imap, *self.pop3]:
            check(box.check_secrets, f"mailbox {box.name} is not read (the poller retries and logs it)")
        relay = self.outbound.relay
        if relay is not None and (relay.password_env or relay.password_file):
            check(lambda: resolve_secret(relay.password_env, relay.password_file, what="outbound.relay.password"),
                  "outbound mail through the relay waits in the spool (deferred) until it can log in")
        return out
