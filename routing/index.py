"""Lookup tables over one instance's directory, built once per snapshot, and Odoo's address-matching rules.

Keys follow Odoo 19 exactly: `alias_full_name` is ``name@<alias domain name as stored>`` and the bounce and
catchall addresses are ``alias@<name as stored>``; incoming addresses are lower-cased before comparison, so
an alias domain stored with capitals never matches in Odoo (docs/odoo.md §10.3), and not here either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routing.address import Recipient, split_plus
from routing.directory import Alias, AliasDomain, InstanceDirectory


def _alias_order(alias: Alias) -> tuple[str, str, int]:
    # mail.alias _order is (alias_model_id, alias_name): model name stands in for the ir.model id.
    return (alias.model, alias.name, alias.id)


def odoo_full_name(alias: Alias) -> str:
    """`alias_full_name` as Odoo stores it (domain not lower-cased)."""
    return f"{alias.name}@{alias.domain}" if alias.domain else alias.name


@dataclass(frozen=True, slots=True)
class InstanceIndex:
    directory: InstanceDirectory
    full: dict[str, tuple[Alias, ...]]  # Odoo alias_full_name -> aliases (several domains may share a name)
    full_ci: dict[str, tuple[Alias, ...]]  # lower-cased, only to explain a miss caused by a capitalised domain
    local: dict[str, tuple[Alias, ...]]  # alias_incoming_local aliases by name
    bounce_emails: frozenset[str]
    catchall_emails: frozenset[str]
    allowed_domains: frozenset[str]  # empty: ICP not set (local parts match on any domain)
    domains_ci: dict[str, AliasDomain]  # lower-cased alias domain name -> first by sequence

    @classmethod
    def build(cls, inst: InstanceDirectory) -> InstanceIndex:
        full: dict[str, list[Alias]] = {}
        full_ci: dict[str, list[Alias]] = {}
        local: dict[str, list[Alias]] = {}
        for alias in sorted(inst.aliases, key=_alias_order):
            if alias.domain:
                full.setdefault(odoo_full_name(alias), []).append(alias)
                full_ci.setdefault(odoo_full_name(alias).lower(), []).append(alias)
            if alias.incoming_local and alias.name:
                local.setdefault(alias.name, []).append(alias)
        domains = sorted(inst.domains, key=lambda d: (d.sequence, d.id))
        domains_ci: dict[str, AliasDomain] = {}
        for d in domains:
            domains_ci.setdefault(d.name.lower(), d)
        allowed = frozenset(inst.allowed_domains)
        if allowed:  # Odoo adds every alias domain name once the ICP is set
            allowed |= {d.name for d in domains}
        return cls(
            directory=inst,
            full={k: tuple(v) for k, v in full.items()},
            full_ci={k: tuple(v) for k, v in full_ci.items()},
            local={k: tuple(v) for k, v in local.items()},
            bounce_emails=frozenset(f"{d.bounce_alias}@{d.name}" for d in domains if d.bounce_alias),
            catchall_emails=frozenset(f"{d.catchall_alias}@{d.name}" for d in domains if d.catchall_alias),
            allowed_domains=allowed,
            domains_ci=domains_ci,
        )

    @property
    def name(self) -> str:
        return self.directory.instance

    # -- Odoo's rules -----------------------------------------------------------------------------------

    def filter_local(self, address: str) -> str | None:
        """Odoo's ``_filter_excluded_local_part``: the local part, if the domain passes the allowed list."""
        left, at, domain = address.partition("@")
        if not at or not domain:
            return None
        if self.allowed_domains and domain not in self.allowed_domains:
            return None
        return left or None

    def aliases_for(self, addresses: Iterable[str], localparts: Iterable[str]) -> list[Alias]:
        """Odoo's alias search: full name in `addresses`, or name in `localparts` with incoming-local set."""
        found: dict[int, Alias] = {}
        for addr in addresses:
            for alias in self.full.get(addr, ()):
                found[alias.id] = alias
        for lp in localparts:
            for alias in self.local.get(lp, ()):
                found[alias.id] = alias
        return sorted(found.values(), key=_alias_order)

    def aliases_for_address(self, address: str) -> tuple[list[Alias], str]:
        """Aliases one lower-cased address reaches, and how (``full_address`` / ``incoming_local`` / "")."""
        full = self.full.get(address)
        if full:
            return list(full), "full_address"
        lp = self.filter_local(address)
        if lp is not None and lp in self.local:
            return list(self.local[lp]), "incoming_local"
        return [], ""

    def is_bounce_email(self, address: str) -> bool:
        return address in self.bounce_emails

    def is_catchall_email(self, address: str) -> bool:
        return address in self.catchall_emails

    def alias_domain_of(self, rcpt: Recipient) -> AliasDomain | None:
        return self.domains_ci.get(rcpt.domain)

    def verp_domain(self, rcpt: Recipient, separator: str = "+") -> AliasDomain | None:
        """The alias domain whose bounce alias `rcpt` extends as ``bounce+token@`` (a gateway VERP address)."""
        dom = self.alias_domain_of(rcpt)
        if dom is None or not dom.bounce_alias:
            return None
        base, tag = split_plus(rcpt.local, separator)
        return dom if tag and base == dom.bounce_alias.lower() else None

    def catchall_tag(self, rcpt: Recipient, separator: str = "+") -> tuple[AliasDomain, str] | None:
        """(alias domain, tag as the sender wrote it) for ``catchall+tag@domain``."""
        dom = self.alias_domain_of(rcpt)
        if dom is None or not dom.catchall_alias:
            return None
        base, tag = split_plus(rcpt.local, separator)
        if not tag or base != dom.catchall_alias.lower():
            return None
        _b, raw_tag = split_plus(rcpt.raw_local, separator)
        return dom, raw_tag or tag
