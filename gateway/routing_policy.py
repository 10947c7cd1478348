"""Gateway config -> routing/ plain data, and the adapters the intakes use to ask the Router.

routing/ must not import gateway/, so the translation from `Config` lives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.config import Config
from routing.directory import Directory
from routing.policy import FallbackPolicy, InstancePolicy, ReferencePattern, RoutingPolicy
from routing.router import Precheck, Router

# (recipient, sender) -> None to accept, else the SMTP reply line (gateway.admission.Precheck).
RcptPrecheck = Callable[[str, str], str | None]


def policy_from_config(cfg: Config) -> RoutingPolicy:
    instances = []
    for inst in cfg.odoo:
        fb = inst.fallback
        instances.append(InstancePolicy(
            name=inst.name,
            domains=tuple(inst.domains),
            fallback=FallbackPolicy(action=fb.action, model=fb.model, thread_id=fb.thread_id,
                                    domains=frozenset(d.strip().lower().rstrip(".") for d in fb.domains)),
            reference_patterns=tuple(ReferencePattern.compile(p.regex, p.model, p.field, p.group)
                                     for p in inst.reference_patterns),
            loop_minutes=inst.loop_minutes,
            loop_threshold=inst.loop_threshold,
            subaddress_models=frozenset(inst.subaddress_models) if inst.subaddress_models is not None else None,
        ))
    return RoutingPolicy(
        instances={i.name: i for i in instances},
        auto_submitted=cfg.routing.auto_submitted,
        loop_guard=cfg.routing.loop_guard,
        reply_cache_size=cfg.routing.reply_cache_size,
        reply_cache_ttl=cfg.routing.reply_cache_ttl,
    )


def empty_directory(cfg: Config) -> Directory:
    """No snapshot yet, but the relay check already knows our domains (every RCPT then answers 451)."""
    return Directory.build([], cfg.domain_owner)


def smtp_line(pre: Precheck) -> str | None:
    """None to accept, else the reply line for aiosmtpd."""
    return None if pre.accepted else pre.smtp


def rcpt_precheck(get_router: Callable[[], Router | None],
                  clock: Callable[[], float] = time.time) -> RcptPrecheck:
    """The callable `AdmissionPolicy(precheck=...)` takes: asks the current router (snapshots are swapped).

    No router yet (the directory was never loaded) answers 451 4.3.0: never accept blind.
    """

    def check(rcpt: str, sender: str) -> str | None:
        router = get_router()
        if router is None:
            return "451 4.3.0 Recipient directory unavailable, try again later"
        return smtp_line(router.precheck(rcpt, sender=sender, now=clock()))

    return check
