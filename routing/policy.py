"""What the operator configured for routing, as plain data (built from gateway config by gateway/routing_policy.py).

Kept free of gateway imports so routing stays pure and testable without a config file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from routing.address import normalize_domain

AutoSubmittedAction = Literal["accept", "refuse", "discard"]


@dataclass(frozen=True, slots=True)
class ReferencePattern:
    """``catchall+<ref>@domain`` where <ref> fully matches `regex`: the record of `model` whose `field` == value."""

    regex: re.Pattern[str]
    model: str
    field: str = "name"
    group: int | str = 0

    @classmethod
    def compile(cls, regex: str, model: str, field: str = "name", group: int | str = 0) -> ReferencePattern:
        return cls(re.compile(regex), model, field, group)

    def match(self, text: str) -> str | None:
        m = self.regex.fullmatch(text)
        if not m:
            return None
        try:
            value = m.group(self.group)
        except IndexError:  # a group the regex does not have: the pattern never matches
            return None
        return value or None


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """Mail Odoo's chain would not route: deliver to `model` (record `thread_id`, or a new one), or refuse."""

    action: Literal["deliver", "refuse"] = "refuse"
    model: str | None = None
    thread_id: int | None = None
    domains: frozenset[str] = frozenset()  # empty: every domain of the instance

    def applies_to(self, domain: str) -> bool:
        return self.action == "deliver" and bool(self.model) and (not self.domains or domain in self.domains)


@dataclass(frozen=True, slots=True)
class InstancePolicy:
    name: str
    domains: tuple[str, ...] = ()
    fallback: FallbackPolicy = FallbackPolicy()
    reference_patterns: tuple[ReferencePattern, ...] = ()
    # Mirror of mail.gateway.loop.* (None: use the values the directory read from Odoo).
    loop_minutes: int | None = None
    loop_threshold: int | None = None
    # Models `catchall+<model>-<id>@` may write to (None: any). Odoo checks no contact policy on that path.
    subaddress_models: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class RoutingPolicy:
    instances: Mapping[str, InstancePolicy] = field(default_factory=dict)
    auto_submitted: AutoSubmittedAction = "accept"
    loop_guard: bool = True
    reply_cache_size: int = 10000
    reply_cache_ttl: float = 3600.0
    subaddress_separator: str = "+"

    @classmethod
    def build(cls, instances: Iterable[InstancePolicy], *, auto_submitted: AutoSubmittedAction = "accept",
              loop_guard: bool = True) -> RoutingPolicy:
        return cls({i.name: i for i in instances}, auto_submitted=auto_submitted, loop_guard=loop_guard)

    def instance(self, name: str) -> InstancePolicy:
        return self.instances.get(name) or InstancePolicy(name)

    def domain_owner(self) -> dict[str, str]:
        return {normalize_domain(d): i.name for i in self.instances.values() for d in i.domains}
