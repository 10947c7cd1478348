"""The Odoo instances and the way mail goes to them: delivery, routing, bounces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from gateway.config.auth import SenderPolicyConfig
from gateway.config.types import (
    ConfigError,
    Duration,
    Model,
    SecretHolder,
    parse_duration,
    resolve_secret,
)


class FallbackConfig(Model):
    """What to do with mail Odoo's chain would not route: deliver to a model (and record) or refuse."""

    action: Literal["deliver", "refuse"] = "refuse"
    model: str | None = None
    thread_id: int | None = None
    domains: list[str] = []  # empty: every domain of the instance

    @model_validator(mode="after")
    def _model_needed(self) -> FallbackConfig:
        if self.action == "deliver" and not self.model:
            raise ValueError("fallback action 'deliver' needs a model")
        return self


class ReferencePattern(Model):
    """catchall+<ref>@domain where <ref> matches `regex`: find the record of `model` whose `field` equals it."""

    regex: str
    model: str
    field: str = "name"
    group: int | str = 0  # which regex group is the value to search

    @model_validator(mode="after")
    def _compiles(self) -> ReferencePattern:
        try:
            re.compile(self.regex)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from exc
        return self



class OdooConfig(SecretHolder):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    database: str
    login: str = "mailgw"
    password_env: str | None = None
    password_file: Path | None = None
    api: Literal["xmlrpc", "json2"] = "xmlrpc"
    domains: list[str] = Field(min_length=1)
    timeout: Duration = parse_duration("60s")
    max_concurrency: int = Field(4, ge=1, le=64)
    directory_refresh: Duration = parse_duration("5m")
    fallback: FallbackConfig = FallbackConfig()
    reference_patterns: list[ReferencePattern] = []
    # Models catchall+<model>-<id>@ may post to (None: any). That path checks no alias contact policy.
    subaddress_models: list[str] | None = None
    # Odoo 16 and older have no mail.alias.domain: the catchall domain comes from ICPs.
    legacy_directory: bool = False
    # Mirror of mail.gateway.loop.* checked at the door (None: read the ICPs from Odoo).
    loop_minutes: int | None = None
    loop_threshold: int | None = None
    auth: SenderPolicyConfig = SenderPolicyConfig()  # used when the top-level auth.enabled is true

    @model_validator(mode="after")
    def _normalise(self) -> OdooConfig:
        if not (self.password_env or self.password_file):
            raise ValueError("set password_env or password_file (the Odoo password or API key)")
        if not re.match(r"^https?://", self.url):
            raise ValueError("url must start with http:// or https://")
        object.__setattr__(self, "domains", [d.strip().lower().rstrip(".") for d in self.domains])
        return self

    def password(self) -> str:
        return resolve_secret(self.password_env, self.password_file, what=f"odoo[{self.name}].password")



class DeliveryConfig(Model):
    concurrency: int = Field(8, ge=1, le=256)
    retry_initial: Duration = parse_duration("30s")
    retry_max: Duration = parse_duration("1h")
    lifetime: Duration = parse_duration("5d")
    poll_interval: Duration = parse_duration("1s")
    # After this many consecutive transient failures an instance's breaker opens for `breaker_cooldown`.
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown: Duration = parse_duration("30s")
    crash_limit: int = Field(3, ge=1)  # a message that crashed the worker this often is parked


class RoutingConfig(Model):
    # Refuse (550) or discard mail with Auto-Submitted: auto-* addressed to aliases. Odoo itself accepts it.
    auto_submitted: Literal["accept", "refuse", "discard"] = "accept"
    # Refuse a sender with 451 at the door once Odoo's own loop guard would drop its mail.
    loop_guard: bool = True
    reply_cache_size: int = Field(10000, ge=0)
    reply_cache_ttl: Duration = parse_duration("1h")


class BounceConfig(SecretHolder):
    verp: bool = True
    verp_secret_env: str | None = None
    verp_secret_file: Path | None = None
    # Forward soft and policy bounces to Odoo as well (Odoo would count them as hard ones).
    forward_soft: bool = False
    # Other permanent failures (policy refusal, expiry, unusable address) show as a delivery failure on the
    # recipient's notification in Odoo, without counting a bounce (docs/odoo.md §9).
    report_failures: bool = True

    def verp_secret(self) -> bytes | None:
        """The VERP key, or None (VERP off) when VERP is off, no secret is configured, or it cannot be read. A
        missing secret is not fatal: mail flows with Odoo's static bounce address; `verp_warning()` says why."""
        if not self.verp or not (self.verp_secret_env or self.verp_secret_file):
            return None
        try:
            return resolve_secret(self.verp_secret_env, self.verp_secret_file, what="bounce.verp_secret").encode()
        except ConfigError:
            return None

    def verp_warning(self) -> str | None:
        if not self.verp:
            return None
        if not (self.verp_secret_env or self.verp_secret_file):
            return "bounce.verp is on but no verp_secret_env/verp_secret_file is set: VERP is off"
        try:
            resolve_secret(self.verp_secret_env, self.verp_secret_file, what="bounce.verp_secret")
        except ConfigError as exc:
            return f"{'; '.join(exc.errors)}: VERP is off"
        return None
