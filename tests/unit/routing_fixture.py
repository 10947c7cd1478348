"""A directory and helpers mirroring Odoo 19's `MailGatewayCommon` (addons/test_mail/tests/test_mail_gateway.py).

Alias domain D (bounce ``bounce.test``, catchall ``catchall.test``) and D2; alias ``groups@D`` ->
mail.test.gateway (everyone), ``groups@D2`` -> mail.test.gateway.company; record R of mail.test.gateway holding
message M0; default sender Sylvie Lelitre. docs/routing.md says what the cases cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from routing.decision import RouteDecision
from routing.directory import Alias, AliasDomain, Directory, InstanceDirectory
from routing.message import MessageView
from routing.policy import FallbackPolicy, InstancePolicy, ReferencePattern, RoutingPolicy
from routing.replies import KnownMessage
from routing.router import Router, header_recipients

D = "test.mycompany.com"
D2 = "test.mycompany2.com"
BOUNCE = f"bounce.test@{D}"
BOUNCE2 = f"bounce.test@{D2}"
CATCHALL = f"catchall.test@{D}"
CATCHALL2 = f"catchall.test@{D2}"
GROUPS = f"groups@{D}"
GROUPS2 = f"groups@{D2}"
CONTAINER = f"test.container@{D}"  # an alias of another model, for the forward rule
GATEWAY = "mail.test.gateway"
R_ID = 7
M0 = f"<123456-openerp-{R_ID}-{GATEWAY}@host>"
EMAIL_FROM = '"Sylvie Lelitre" <test.sylvie.lelitre@agrolait.com>'
INSTANCE = "odoo"

ALIAS_GROUPS = Alias(1, "groups", D, GATEWAY)
ALIAS_GROUPS2 = Alias(2, "groups", D2, "mail.test.gateway.company", defaults="{'company_id': 2}")
ALIAS_CONTAINER = Alias(3, "test.container", D, "mail.test.container")
DOMAINS = (
    AliasDomain(1, D, "bounce.test", "catchall.test", company_ids=(1,), sequence=1),
    AliasDomain(2, D2, "bounce.test", "catchall.test", company_ids=(2,), sequence=2),
)
KNOWN: dict[str, KnownMessage] = {M0: KnownMessage(INSTANCE, GATEWAY, R_ID, M0, id=100)}


def make_router(
    *extra: Alias,
    base: Sequence[Alias] = (ALIAS_GROUPS, ALIAS_GROUPS2, ALIAS_CONTAINER),
    allowed: Sequence[str] = (),
    fallback: FallbackPolicy = FallbackPolicy(),
    patterns: Sequence[ReferencePattern] = (),
    auto_submitted: str = "accept",
    loop_minutes: int | None = None,
    loop_threshold: int | None = None,
    loop_allowed: Sequence[str] = (),
    subaddress_models: frozenset[str] | None = None,
) -> Router:
    inst = InstanceDirectory(
        INSTANCE, domains=DOMAINS, aliases=(*base, *extra), allowed_domains=tuple(allowed),
        loop_allowed=tuple(loop_allowed),
    )
    directory = Directory.build([inst], {D: INSTANCE, D2: INSTANCE})
    policy = RoutingPolicy.build(
        [InstancePolicy(INSTANCE, (D, D2), fallback=fallback, reference_patterns=tuple(patterns),
                        loop_minutes=loop_minutes, loop_threshold=loop_threshold,
                        subaddress_models=subaddress_models)],
        auto_submitted=auto_submitted,  # type: ignore[arg-type]
    )
    return Router(directory, policy)


def mail(
    to: str | None = GROUPS,
    *,
    cc: str | None = None,
    email_from: str = EMAIL_FROM,
    subject: str = "Frogs",
    msg_id: str = "<1198923581.41972151344608186760.JavaMail.new@agrolait.com>",
    extra: Iterable[tuple[str, str]] = (),
    content_type: str = "text/plain; charset=utf-8",
) -> MessageView:
    """Odoo's MAIL_TEMPLATE, headers only."""
    lines = ["Return-Path: <whatever-2a840@postmaster.twitter.com>", f"From: {email_from}"]
    if to is not None:
        lines.append(f"To: {to}")
    if cc is not None:
        lines.append(f"Cc: {cc}")
    lines += [f"Subject: {subject}", f"Message-ID: {msg_id}", f"Content-Type: {content_type}"]
    lines += [f"{k}: {v}" for k, v in extra]
    return MessageView.from_bytes(("\r\n".join(lines) + "\r\n\r\nPlease call me as soon as possible.\r\n").encode())


def decide(router: Router, msg: MessageView, rcpts: Sequence[str] | None = None,
           known: Mapping[str, KnownMessage] | None = None) -> list[RouteDecision]:
    """Route like `mailgw route`: without rcpts, the recipients are the message's Delivered-To/To/Cc."""
    recipients = list(rcpts) if rcpts is not None else header_recipients(msg)
    return router.route(msg, recipients, KNOWN if known is None else known)


def of(decisions: Sequence[RouteDecision], address: str) -> RouteDecision:
    return next(d for d in decisions if d.recipient.lower() == address.lower())
