"""The alias directory: an immutable snapshot of what each Odoo instance routes.

Built by the gateway from Odoo (`mail.alias.domain`, `mail.alias`, a few ICPs) and cached on disk as JSON
(the format `mailgw directory show --json` prints and `mailgw route --directory` reads). Pure data: no I/O
here beyond (de)serialising dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ContactPolicy = Literal["everyone", "partners", "followers"]
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class AliasDomain:
    """One `mail.alias.domain` (Odoo ≥17) or the ICP-defined catchall domain (Odoo ≤16, id 0)."""

    id: int
    name: str  # as stored in Odoo (Odoo does not lower-case it)
    bounce_alias: str = "bounce"
    catchall_alias: str = "catchall"
    default_from: str = "notifications"  # local part or full address
    company_ids: tuple[int, ...] = ()
    sequence: int = 10

    @property
    def bounce_email(self) -> str:
        return f"{self.bounce_alias}@{self.name}".lower() if self.bounce_alias else ""

    @property
    def catchall_email(self) -> str:
        return f"{self.catchall_alias}@{self.name}".lower() if self.catchall_alias else ""

    @property
    def default_from_email(self) -> str:
        if "@" in self.default_from:
            return self.default_from.lower()
        return f"{self.default_from}@{self.name}".lower() if self.default_from else ""


@dataclass(frozen=True, slots=True)
class Alias:
    """One `mail.alias` with a name."""

    id: int
    name: str  # alias_name, already sanitised (lower-case) by Odoo
    domain: str | None  # alias domain name, None for an alias without domain (never matches)
    model: str  # technical model name of alias_model_id
    force_thread_id: int | None = None
    parent_model: str | None = None
    parent_thread_id: int | None = None
    contact: ContactPolicy = "everyone"
    incoming_local: bool = False
    status: str = "not_tested"  # not_tested | valid | invalid
    defaults: str = "{}"  # Python-literal dict text, as Odoo stores it

    @property
    def full_name(self) -> str:
        """alias_full_name as Odoo stores it: ``name@domain`` or just ``name``."""
        return f"{self.name}@{self.domain}".lower() if self.domain else self.name.lower()


@dataclass(frozen=True, slots=True)
class InstanceDirectory:
    """Everything routing needs to know about one Odoo instance."""

    instance: str
    domains: tuple[AliasDomain, ...] = ()
    aliases: tuple[Alias, ...] = ()
    # ICP mail.catchall.domain.allowed (lower-cased); empty = not set.
    allowed_domains: tuple[str, ...] = ()
    loop_minutes: int = 120
    loop_threshold: int = 20
    loop_allowed: tuple[str, ...] = ()  # mail.gateway.allowed, normalised addresses
    # Addresses of active internal users (res.users with share=False), normalised: Odoo creates records as the
    # user whose address is the From (sender authentication protects them, gateway/auth).
    internal_users: tuple[str, ...] = ()
    server_version: str = ""
    fetched_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceDirectory:
        return cls(
            instance=str(data["instance"]),
            domains=tuple(
                AliasDomain(**{**d, "company_ids": tuple(d.get("company_ids", ()))})
                for d in data.get("domains", ())
            ),
            aliases=tuple(Alias(**a) for a in data.get("aliases", ())),
            allowed_domains=tuple(data.get("allowed_domains", ())),
            loop_minutes=int(data.get("loop_minutes", 120)),
            loop_threshold=int(data.get("loop_threshold", 20)),
            loop_allowed=tuple(data.get("loop_allowed", ())),
            internal_users=tuple(data.get("internal_users", ())),
            server_version=str(data.get("server_version", "")),
            fetched_at=float(data.get("fetched_at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class Directory:
    """All instances' directories, plus which mail domains (from config) belong to which instance."""

    instances: Mapping[str, InstanceDirectory] = field(default_factory=dict)
    # Recipient domain -> instance name, from config `odoo[].domains` (the relay check uses this even
    # before any snapshot was fetched).
    domain_owner: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, instances: Iterable[InstanceDirectory], domain_owner: Mapping[str, str]) -> Directory:
        return cls({d.instance: d for d in instances}, {k.lower(): v for k, v in domain_owner.items()})

    def with_instance(self, inst: InstanceDirectory) -> Directory:
        """A new snapshot with one instance replaced (snapshots are swapped, never mutated)."""
        return Directory({**self.instances, inst.instance: inst}, self.domain_owner)

    def owner_of(self, domain: str) -> str | None:
        return self.domain_owner.get(domain.lower().rstrip("."))

    def is_ready(self, instance: str) -> bool:
        return instance in self.instances

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "domain_owner": dict(self.domain_owner),
            "instances": [d.to_dict() for d in self.instances.values()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Directory:
        if data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"unsupported directory format {data.get('format')!r}")
        return cls.build(
            (InstanceDirectory.from_dict(d) for d in data.get("instances", ())),
            data.get("domain_owner", {}),
        )
