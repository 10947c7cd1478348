"""What to check: the domains and, per domain, its bounce domain and DKIM keys, from config and options.

Precedence for every setting: the command-line value, then ``dns_check:`` in the config, then what the
rest of the config implies (``odoo[].domains``, ``outbound.dkim``, the SMTP listeners).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dns_checks.dmarc import is_aligned
from dns_checks.resolver import normalize
from gateway.config import Config, DkimConfig


@dataclass(frozen=True, slots=True)
class MailDomain:
    """A domain Odoo receives and sends mail for; `bounce_domain` when its Return-Path is elsewhere."""

    name: str
    bounce_domain: str | None = None


@dataclass(frozen=True, slots=True)
class DomainTarget:
    domain: str  # the catchall/alias domain, also the From domain of Odoo's mail
    bounce_domain: str  # the envelope sender (Return-Path) domain
    selectors: tuple[str, ...] = ()  # selectors at `domain` to check without a known key
    signers: tuple[DkimConfig, ...] = ()  # keys the gateway signs this domain's mail with


@dataclass(frozen=True, slots=True)
class CheckPlan:
    targets: tuple[DomainTarget, ...]
    ip: str | None = None  # the gateway's sending address
    expect_mx: tuple[str, ...] = ()  # host names or addresses the MX must point to; empty: not checked
    helo_name: str | None = None


def listener_hosts(cfg: Config) -> list[str]:
    """Where the SMTP listeners say the gateway is: explicit banner names and specific bind addresses."""
    out: list[str] = []
    for lst in cfg.listeners:
        if lst.kind != "smtp" or lst.unix_path:
            continue
        if lst.hostname:
            out.append(lst.hostname)
        host, _ = lst.host_port
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not (addr.is_unspecified or addr.is_loopback):
            out.append(str(addr))
    return list(dict.fromkeys(out))


def plan_checks(cfg: Config | None, domains: Sequence[str | MailDomain] = (), *,
                extra_domains: Iterable[str | MailDomain] = (), bounce_domain: str | None = None,
                selector: str | None = None, ip: str | None = None,
                expect_mx: Sequence[str] = ()) -> CheckPlan:
    """`domains` replaces the config's; `extra_domains` (e.g. Odoo's alias domains) are added to them."""
    dc = cfg.dns_check if cfg else None
    chosen: list[MailDomain] = []
    if domains:
        chosen = [_mail_domain(d) for d in domains]
    else:
        if cfg:
            chosen = [MailDomain(d) for inst in cfg.odoo for d in inst.domains]
        chosen += [_mail_domain(d) for d in extra_domains]
    seen: dict[str, MailDomain] = {}
    for md in chosen:
        seen.setdefault(md.name, md)
    selector = selector or (dc.selector if dc else None)
    keys = cfg.outbound.dkim if cfg else []
    targets = []
    for md in seen.values():
        signers = tuple(k for k in keys if is_aligned(k.domain, md.name, "r"))
        selectors = (selector,) if selector and not any(
            s.selector == selector and normalize(s.domain) == md.name for s in signers) else ()
        targets.append(DomainTarget(md.name, normalize(bounce_domain or md.bounce_domain or md.name),
                                    selectors, signers))
    expect = tuple(expect_mx) or tuple(dc.expect_mx if dc else ()) or tuple(listener_hosts(cfg) if cfg else ())
    return CheckPlan(tuple(targets), ip or (dc.ip if dc else None), expect,
                     cfg.outbound.helo_name if cfg else None)


def _mail_domain(d: str | MailDomain) -> MailDomain:
    if isinstance(d, MailDomain):
        return MailDomain(normalize(d.name), normalize(d.bounce_domain) if d.bounce_domain else None)
    return MailDomain(normalize(d))
