"""The resolver chain, in Odoo's order. Each resolver is a pure function of (context, recipient).

A `RouteContext` holds what Odoo's ``message_route`` computes once per message for one instance — its
``to`` and ``recipients`` lists (plus the envelope recipients the gateway writes as Delivered-To because
the headers do not show them), the reply it would find, the forward rule, the direct-catchall test, the aliases it would
match, and the fallback model/thread the gateway would pass — so message-level rules apply across
recipients as Odoo applies them. Resolvers turn that into one `RouteDecision` per recipient, or None to
let the next one speak.

Address-only rules (for the RCPT-time precheck) are in `by_address`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from routing.address import Recipient, canonical_recipient, normalize_address
from routing.decision import RouteDecision, RouteKind
from routing.directory import Alias
from routing.index import InstanceIndex, odoo_full_name
from routing.message import MessageView, lazy, parse_model_id
from routing.policy import InstancePolicy
from routing.replies import KnownMessage, pick_reply

# SMTP answers for refusals.
NO_SUCH_USER = (550, "5.1.1", "No such recipient here")
RELAY_DENIED = (550, "5.7.1", "Relaying denied: not a domain of this gateway")
CATCHALL_REFUSED = (550, "5.7.1", "Mail to the catchall address alone is not accepted")
DIRECTORY_UNAVAILABLE = (451, "4.3.0", "Recipient directory unavailable, try again later")
BAD_ADDRESS = (501, "5.1.3", "Bad recipient address syntax")
TOO_MANY = (451, "4.7.1", "Too many messages from this sender, try again later")
AUTO_REFUSED = (550, "5.7.1", "Automatic replies are not accepted at this address")
DISCARDED = (250, "2.0.0", "Accepted and discarded")

_POLICY_NOTE = {
    "partners": "it accepts only senders known as partners (Odoo checks and may refuse)",
    "followers": "it accepts only followers of its record (Odoo checks and may refuse)",
}


@dataclass(frozen=True, slots=True)
class SubaddressTarget:
    """What ``catchall+<tag>@`` means: a record by id, or a reference to look up; `error` when not understood."""

    model: str | None = None
    thread_id: int | None = None
    lookup: tuple[str, str, str] | None = None
    rule: str = ""
    error: str = ""


def parse_subaddress(index: InstanceIndex, ipolicy: InstancePolicy, rcpt: Recipient,
                     separator: str = "+") -> SubaddressTarget | None:
    """``catchall+<model>-<id>@`` or ``catchall+<reference>@`` (configured patterns win); None if not catchall+."""
    found = index.catchall_tag(rcpt, separator)
    if found is None:
        return None
    _dom, tag = found
    for pattern in ipolicy.reference_patterns:
        value = pattern.match(tag)
        if value is not None:
            return SubaddressTarget(model=pattern.model, lookup=(pattern.model, pattern.field, value),
                                    rule="subaddress.reference")
    parsed = parse_model_id(tag)
    if parsed is None:
        return SubaddressTarget(error=f"'{tag}' is neither <model>-<id> nor a configured reference pattern")
    model, res_id = parsed
    if ipolicy.subaddress_models is not None and model not in ipolicy.subaddress_models:
        return SubaddressTarget(error=f"model {model} is not in subaddress_models")
    return SubaddressTarget(model=model, thread_id=res_id, rule="subaddress.model_id")


def describe_alias(alias: Alias) -> str:
    if alias.force_thread_id:
        what = f"posts on {alias.model} record {alias.force_thread_id}"
    else:
        what = f"creates a {alias.model} record"
    note = _POLICY_NOTE.get(alias.contact)
    if alias.contact == "followers" and not alias.force_thread_id and not alias.parent_thread_id:
        note = "it is followers-only without any record: Odoo refuses (configuration error) and marks it invalid"
    return f"{what}; {note}" if note else what


def refusal(rcpt: str, instance: str | None, rule: str, reason: str,
            reply: tuple[int, str, str] = NO_SUCH_USER) -> RouteDecision:
    return RouteDecision(recipient=rcpt, route="refuse", instance=instance, rule=rule, reason=reason, reply=reply)


@dataclass(frozen=True, slots=True)
class _Target:
    kind: str  # subaddress | fallback
    model: str | None
    thread_id: int | None
    lookup: tuple[str, str, str] | None
    rule: str
    source: str  # the recipient that supplied it


class RouteContext:
    """Odoo's view of one message on one instance."""

    def __init__(self, index: InstanceIndex, ipolicy: InstancePolicy, msg: MessageView,
                 envelope: Sequence[Recipient], refs: Sequence[str], known: Mapping[str, KnownMessage],
                 *, separator: str = "+") -> None:
        self.index = index
        self.ipolicy = ipolicy
        self.msg = msg
        self.envelope = envelope
        self.refs = refs
        self.known = known
        self.separator = separator
        self.instance = index.name
        self._bounce_rcpt: dict[str, tuple[str, str] | None] = {}

    # -- Odoo's lists -----------------------------------------------------------------------------------

    def is_bounce_recipient(self, rcpt: Recipient) -> tuple[str, str] | None:
        """(rule, reason) when the envelope recipient itself is a bounce address (exact or VERP)."""
        cache = self._bounce_rcpt
        if rcpt.address not in cache:
            cache[rcpt.address] = self._bounce_recipient(rcpt)
        return cache[rcpt.address]

    def _bounce_recipient(self, rcpt: Recipient) -> tuple[str, str] | None:
        dom = self.index.alias_domain_of(rcpt)
        if dom is not None and dom.bounce_alias and rcpt.local == dom.bounce_alias.lower():
            return "bounce.address", f"{rcpt.address} is the bounce address of {dom.name}"
        vdom = self.index.verp_domain(rcpt, self.separator)
        if vdom is not None:
            return "bounce.verp", f"{rcpt.address} is a VERP bounce address of {vdom.name} (the gateway decodes it)"
        return None

    @lazy
    def added(self) -> list[str]:
        """Envelope recipients the gateway adds as Delivered-To: those Odoo cannot see in the headers.

        Bounce addresses go to the bounce path instead; recipients already in Delivered-To/To/Cc/Resent-*
        are not repeated, since a Cc'd alias written as Delivered-To would count as To for Odoo (forward
        rule, catchall and bounce tests) and change its decision.
        """
        return added_delivered_to(self.msg, [r for r in self.envelope if self.is_bounce_recipient(r) is None])

    @lazy
    def to_list(self) -> list[str]:
        """Odoo's ``email_to_list``: lower-cased Delivered-To (added + the message's) and To."""
        return list(dict.fromkeys(self.added + [a.lower() for a in self.msg.odoo_to]))

    @lazy
    def to_normalized(self) -> list[str]:
        """``email_normalize(e) or e`` over ``to``: what the bounce and catchall tests compare."""
        return list(dict.fromkeys(self.added + [normalize_address(a) for a in self.msg.odoo_to]))

    @lazy
    def rcpt_list(self) -> list[str]:
        extra = self.msg.cc + self.msg.resent_to + self.msg.resent_cc
        return list(dict.fromkeys(self.to_list + [a.lower() for a in extra]))

    def _localparts(self, addresses: Sequence[str]) -> list[str]:
        return [lp for lp in (self.index.filter_local(a) for a in addresses) if lp]

    # -- message-level facts ----------------------------------------------------------------------------

    @lazy
    def bounce(self) -> tuple[str, str] | None:
        """(rule, reason) when Odoo takes this message as a bounce (its ``_detect_is_bounce``)."""
        for addr in self.to_normalized:
            if self.index.is_bounce_email(addr):
                return "bounce.address", f"{addr} (To/Delivered-To) is a bounce address: Odoo treats it as a bounce"
        if self.msg.is_from_mailer_daemon:
            return "bounce.mailer_daemon", "the sender is MAILER-DAEMON: Odoo treats it as a bounce"
        if self.msg.is_report:
            return "bounce.dsn", "Content-Type multipart/report (a delivery report): Odoo treats it as a bounce"
        return None

    @lazy
    def replied(self) -> KnownMessage | None:
        return pick_reply(self.refs, self.known, self.instance)

    @lazy
    def forward_aliases(self) -> list[Alias]:
        """Odoo's forward rule: aliases of another model than the replied record's, addressed in To."""
        hit = self.replied
        if hit is None or not hit.model or not hit.res_id:
            return []
        candidates = self.index.aliases_for(self.to_list, self._localparts(self.to_list))
        return [a for a in candidates if a.model != hit.model]

    @lazy
    def reply_alias(self) -> Alias | None:
        """The same-model alias among the recipients (its contact policy applies to the reply)."""
        hit = self.replied
        if hit is None or not hit.model:
            return None
        found = self.index.aliases_for(self.rcpt_list, self._localparts(self.rcpt_list))
        return next((a for a in found if a.model == hit.model), None)

    @lazy
    def is_reply(self) -> bool:
        hit = self.replied
        return hit is not None and bool(hit.model) and not self.forward_aliases

    @lazy
    def rcpt_valid_list(self) -> list[str]:
        fwd = self.forward_aliases
        if not fwd:
            return self.rcpt_list
        names = {odoo_full_name(a) for a in fwd}
        local_names = {a.name for a in fwd if a.incoming_local}
        return [to for to in self.rcpt_list if to in names or to.split("@", 1)[0] in local_names]

    @lazy
    def direct_catchall(self) -> bool:
        """Odoo's strict ``_detect_write_to_catchall``: every ``to`` address is some domain's catchall."""
        to = self.to_normalized
        return bool(to) and bool(self.index.catchall_emails) and all(self.index.is_catchall_email(a) for a in to)

    @lazy
    def any_catchall_in_to(self) -> bool:
        return any(self.index.is_catchall_email(a) for a in self.to_normalized)

    @lazy
    def alias_routes(self) -> list[Alias]:
        if not self.rcpt_list:
            return []
        return self.index.aliases_for(self.rcpt_valid_list, self._localparts(self.rcpt_valid_list))

    @lazy
    def target(self) -> _Target | None:
        """The model/thread the gateway passes to message_process: first catchall+sub, else the fallback."""
        candidates = [r for r in self.envelope if self.is_bounce_recipient(r) is None]
        for r in candidates:
            sub = parse_subaddress(self.index, self.ipolicy, r, self.separator)
            if sub is not None and not sub.error:
                return _Target("subaddress", sub.model, sub.thread_id, sub.lookup, sub.rule, r.address)
        fb = self.ipolicy.fallback
        for r in candidates:
            if fb.applies_to(r.domain):
                return _Target("fallback", fb.model, fb.thread_id, None, "fallback.deliver", r.address)
        return None

    def alias_for(self, rcpt: Recipient) -> tuple[Alias | None, str]:
        """Which of the matched alias routes this recipient is, and how it matched."""
        matched, how = self.index.aliases_for_address(rcpt.address)
        routes = {a.id for a in self.alias_routes}
        alias = next((a for a in matched if a.id in routes), None)
        return alias, how


def added_delivered_to(msg: MessageView, recipients: Sequence[Recipient | str]) -> list[str]:
    """The recipients (canonical) to write as Delivered-To: those absent from Odoo's recipient headers."""
    seen = {a.lower() for a in msg.odoo_recipients}
    out: list[str] = []
    for r in recipients:
        addr = r.address if isinstance(r, Recipient) else canonical_recipient(r)
        if addr not in seen:
            seen.add(addr)
            out.append(addr)
    return out


Resolver = Callable[[RouteContext, Recipient], RouteDecision | None]


def _decision(ctx: RouteContext, rcpt: Recipient, route: RouteKind, *, rule: str, reason: str,
              model: str | None = None, thread_id: int | None = None, alias: str | None = None,
              lookup: tuple[str, str, str] | None = None) -> RouteDecision:
    return RouteDecision(recipient=rcpt.original, route=route, instance=ctx.instance, model=model,
                         thread_id=thread_id, alias=alias, rule=rule, reason=reason, lookup=lookup)


def by_loop_marker(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    """Odoo drops answers to its own refusal/loop notices before routing; the gateway drops them too."""
    if not ctx.msg.is_loop_notice_reply:
        return None
    return refusal(rcpt.original, ctx.instance, "loop.notice_reply",
                   "answers one of Odoo's refusal/loop notices: Odoo drops it silently, so does the gateway",
                   DISCARDED)


def by_bounce(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    found = ctx.is_bounce_recipient(rcpt) or ctx.bounce
    if found is None:
        return None
    rule, reason = found
    return _decision(ctx, rcpt, "bounce", rule=rule, reason=reason)


def by_reply(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    if not ctx.is_reply:
        return None
    hit = ctx.replied
    assert hit is not None
    via = "References" if ctx.msg.references else "In-Reply-To"
    rule = "reply.relayed" if hit.source == "relayed" else ("reply.references" if ctx.msg.references
                                                            else "reply.in_reply_to")
    where = f"{hit.model} record {hit.res_id}" if hit.res_id else f"a new {hit.model} record (no record id)"
    reason = f"{via} names {hit.message_id}"
    reason += " (relayed by the gateway)" if hit.source == "relayed" else ""
    reason += f": Odoo posts on {where}"
    alias = ctx.reply_alias
    if alias is not None and alias.contact in _POLICY_NOTE:
        reason += f"; alias {odoo_full_name(alias)} is in the recipients and {_POLICY_NOTE[alias.contact]}"
    return _decision(ctx, rcpt, "reply", model=hit.model, thread_id=hit.res_id or None,
                     alias=odoo_full_name(alias) if alias else None, rule=rule, reason=reason)


def by_alias(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    if not ctx.rcpt_list:
        return None
    if ctx.direct_catchall:
        return refusal(rcpt.original, ctx.instance, "catchall.direct",
                       "every To/Delivered-To address is a catchall: Odoo refuses a direct write to the catchall",
                       CATCHALL_REFUSED)
    routes = ctx.alias_routes
    if not routes:
        return None
    alias, how = ctx.alias_for(rcpt)
    others = [odoo_full_name(a) for a in routes if alias is None or a.id != alias.id]
    if alias is not None:
        rule = "alias.forward" if ctx.forward_aliases else f"alias.{how}"
        reason = f"{rcpt.address} is alias {odoo_full_name(alias)}"
        reason += " (matched on its local part)" if how == "incoming_local" else ""
        if ctx.forward_aliases:
            reason += f", another model than the replied {ctx.replied.model if ctx.replied else ''}: a forward"
        reason += f": Odoo {describe_alias(alias)}"
    else:
        alias = routes[0]
        others = others[1:]
        rule = "alias.forward" if ctx.forward_aliases else "alias.other_recipient"
        reason = (f"{rcpt.address} routes nowhere itself; Odoo routes the message through alias "
                  f"{odoo_full_name(alias)} found in the headers and {describe_alias(alias)}")
    if others:
        reason += f" (also alias routes: {', '.join(others)})"
    return _decision(ctx, rcpt, "alias", model=alias.model, thread_id=alias.force_thread_id,
                     alias=odoo_full_name(alias), rule=rule, reason=reason)


def by_subaddress(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    t = ctx.target
    if t is None or t.kind != "subaddress":
        return None
    what = f"{t.model} record {t.thread_id}" if t.thread_id else \
        f"the {t.model} record whose {t.lookup[1] if t.lookup else '?'} is {t.lookup[2] if t.lookup else '?'}"
    if t.source == rcpt.address:
        rule, reason = t.rule, f"{rcpt.address} names {what}: delivered with message_process(model, thread_id)"
    else:
        rule = "subaddress.other_recipient"
        reason = f"no alias or reply matched; {t.source} names {what}, where Odoo posts the message"
    return _decision(ctx, rcpt, "subaddress", model=t.model, thread_id=t.thread_id, rule=rule, reason=reason,
                     lookup=t.lookup)


def by_fallback(ctx: RouteContext, rcpt: Recipient) -> RouteDecision | None:
    t = ctx.target
    if t is None or t.kind != "fallback":
        return None
    where = f"{t.model} record {t.thread_id}" if t.thread_id else f"a new {t.model} record"
    if t.source == rcpt.address or ctx.ipolicy.fallback.applies_to(rcpt.domain):
        rule, reason = "fallback.deliver", f"no alias or reply matched; the configured fallback delivers to {where}"
    else:
        rule = "fallback.other_recipient"
        reason = f"no alias or reply matched; the fallback of {t.source} delivers the message to {where}"
    return _decision(ctx, rcpt, "fallback", model=t.model, thread_id=t.thread_id, rule=rule, reason=reason)


def by_refusal(ctx: RouteContext, rcpt: Recipient) -> RouteDecision:
    if ctx.any_catchall_in_to:
        return refusal(rcpt.original, ctx.instance, "catchall.unroutable",
                       "a catchall plus addresses that route nowhere: Odoo refuses it as a catchall write",
                       CATCHALL_REFUSED)
    sub = parse_subaddress(ctx.index, ctx.ipolicy, rcpt, ctx.separator)
    if sub is not None and sub.error:
        return refusal(rcpt.original, ctx.instance, "subaddress.invalid", f"catchall subaddress: {sub.error}")
    reason = f"{rcpt.address} is no alias, no reply matched and no fallback applies: Odoo finds no route"
    if rcpt.address in ctx.index.full_ci and rcpt.address not in ctx.index.full:
        reason += " (an alias matches only case-insensitively: its domain is stored with capitals in Odoo)"
    return refusal(rcpt.original, ctx.instance, "refuse.no_route", reason)


CHAIN: tuple[Resolver, ...] = (by_loop_marker, by_bounce, by_reply, by_alias, by_subaddress, by_fallback)


def resolve(ctx: RouteContext, rcpt: Recipient) -> RouteDecision:
    for resolver in CHAIN:
        decision = resolver(ctx, rcpt)
        if decision is not None:
            return decision
    return by_refusal(ctx, rcpt)


def by_address(index: InstanceIndex, ipolicy: InstancePolicy, rcpt: Recipient,
               separator: str = "+") -> RouteDecision | None:
    """Address-only rules (RCPT time): a decision for what the address alone says; None for a catchall.

    Refusals carry their SMTP answer. The catchall is accepted without a decision: whether Odoo takes the
    message (a reply) or refuses it (a direct catchall write) depends on the headers.
    """
    inst = index.name
    dom = index.alias_domain_of(rcpt)
    if dom is not None and dom.bounce_alias and rcpt.local == dom.bounce_alias.lower():
        return RouteDecision(rcpt.original, "bounce", inst, rule="bounce.address",
                             reason=f"the bounce address of {dom.name}")
    vdom = index.verp_domain(rcpt, separator)
    if vdom is not None:
        return RouteDecision(rcpt.original, "bounce", inst, rule="bounce.verp",
                             reason=f"a VERP bounce address of {vdom.name}")
    aliases, how = index.aliases_for_address(rcpt.address)
    if aliases:
        alias = aliases[0]
        return RouteDecision(rcpt.original, "alias", inst, model=alias.model, thread_id=alias.force_thread_id,
                             alias=odoo_full_name(alias), rule=f"alias.{how}",
                             reason=f"alias {odoo_full_name(alias)}: Odoo {describe_alias(alias)}")
    if dom is not None and dom.catchall_alias and rcpt.local == dom.catchall_alias.lower():
        return None
    sub = parse_subaddress(index, ipolicy, rcpt, separator)
    if sub is not None:
        if sub.error:
            return refusal(rcpt.original, inst, "subaddress.invalid", f"catchall subaddress: {sub.error}")
        what = f"{sub.model} record {sub.thread_id}" if sub.thread_id else f"a {sub.model} reference"
        return RouteDecision(rcpt.original, "subaddress", inst, model=sub.model, thread_id=sub.thread_id,
                             rule=sub.rule, reason=f"catchall subaddress naming {what}", lookup=sub.lookup)
    fb = ipolicy.fallback
    if fb.applies_to(rcpt.domain):
        return RouteDecision(rcpt.original, "fallback", inst, model=fb.model, thread_id=fb.thread_id,
                             rule="fallback.deliver", reason=f"unknown address; the fallback delivers to {fb.model}")
    reason = f"{rcpt.address} is no alias, bounce or catchall address of {inst}"
    if rcpt.address in index.full_ci:
        reason += " (an alias matches only case-insensitively: its domain is stored with capitals in Odoo)"
    return refusal(rcpt.original, inst, "refuse.unknown", reason)
