"""Unit tests of routing's parts: addresses, the header view, reply inputs, the loop guard, the router's
gateway-side rules (relay, readiness, subaddress, multi-instance, snapshot swaps) and explanations."""

from __future__ import annotations

import dataclasses

import pytest

from routing.address import (
    canonical_recipient,
    decode_name,
    email_normalize,
    email_split,
    email_split_tuples,
    is_mailer_daemon,
    normalize_domain,
    parse_recipient,
    split_plus,
)
from routing.decision import RouteDecision, is_deferral, is_discard, plan_deliveries
from routing.directory import Alias, AliasDomain, Directory, InstanceDirectory
from routing.loopguard import LoopGuard, target_key
from routing.message import MessageView, header_block, parse_model_id, unfold_references
from routing.policy import FallbackPolicy, InstancePolicy, ReferencePattern, RoutingPolicy
from routing.replies import KnownMessage, pick_reply, reference_ids
from routing.resolvers import added_delivered_to
from routing.router import Router, explain, header_recipients
from tests.unit.routing_fixture import (
    CATCHALL,
    D2,
    GATEWAY,
    GROUPS,
    INSTANCE,
    KNOWN,
    M0,
    R_ID,
    D,
    decide,
    mail,
    make_router,
)

# -- addresses ----------------------------------------------------------------------------------------------


def test_email_split_follows_odoo() -> None:
    assert email_split('"Raoul Grosbedon" <raoul@grosbedon.fr>, x@y.z') == ["raoul@grosbedon.fr", "x@y.z"]
    assert email_split_tuples("Raoul raoul@grosbedon.fr") == [("Raoul", "raoul@grosbedon.fr")]
    assert email_split("undisclosed-recipients:;") == []
    assert email_split("no address here") == []
    assert email_split("") == [] and email_split(None) == []
    # odoo/addons/base/tests/test_mail.py test_email_split, and the "@gmail.com" corner case.
    assert email_split("d@x; 1@2") == ["d@x", "1@2"]
    assert email_split("'(ss)' <123@gmail.com>, 'foo' <foo@bar>") == ["123@gmail.com", "foo@bar"]
    assert email_split('"john@gmail.com"<johnny@gmail.com>') == ["johnny@gmail.com"]
    assert email_split('"<jg>" <johnny@gmail.com>') == ["johnny@gmail.com"]
    assert email_split("a@b.com, @gmail.com") == ["a@b.com"]


def test_email_normalize_lowers_ascii_local_parts_only() -> None:
    assert email_normalize('"Name" <NaMe@DoMaIn.CoM>') == "name@domain.com"
    assert email_normalize("Ünïcode@DOMAIN.com") == "Ünïcode@domain.com"
    assert email_normalize("a@b.c, d@e.f") is None
    assert email_normalize("a@b.c, d@e.f", strict=False) == "a@b.c"
    assert email_normalize("") is None


def test_envelope_recipients_are_canonicalised() -> None:
    r = parse_recipient("<Groups@Bücher.Example.>")
    assert r is not None and r.address == "groups@xn--bcher-kva.example" and r.raw_local == "Groups"
    assert r.original == "<Groups@Bücher.Example.>"
    assert parse_recipient("<@relay.example:user@example.com>").address == "user@example.com"  # type: ignore[union-attr]
    assert parse_recipient('"john doe"@example.com') is None  # spaces are not for routing
    assert parse_recipient('"x"@example.com').address == "x@example.com"  # type: ignore[union-attr]
    for bad in ("", "<>", "nobody", "@example.com", "a@", "a b@c.d", None):
        assert parse_recipient(bad) is None  # type: ignore[arg-type]
    assert normalize_domain("EXAMPLE.com.") == "example.com"
    assert canonical_recipient("<A@B.C>") == "a@b.c"


def test_plus_split_and_names() -> None:
    assert split_plus("catchall+sale.order-42") == ("catchall", "sale.order-42")
    assert split_plus("catchall") == ("catchall", None)
    assert decode_name("=?utf-8?q?Ren=C3=A9?=") == "René"
    assert decode_name("=?bogus-charset?q?x?=") == "=?bogus-charset?q?x?=" or decode_name("=?bogus-charset?q?x?=")
    assert is_mailer_daemon('"Mail Delivery System" <MAILER-DAEMON@x.y>')
    assert not is_mailer_daemon("daemon@x.y")


def test_model_id_form() -> None:
    assert parse_model_id("sale.order-42") == ("sale.order", 42)
    assert parse_model_id("Sale.Order-42") == ("sale.order", 42)
    assert parse_model_id("x_custom_model-1") == ("x_custom_model", 1)
    for bad in ("sale.order-0", "sale.order", "-42", "sale..order-1", "sale order-1", "1model-2"):
        assert parse_model_id(bad) is None


# -- the header view ---------------------------------------------------------------------------------------


def test_header_view_reads_only_the_header_block() -> None:
    raw = b"From: a@b.c\r\nTo: x@y.z,\r\n  w@y.z\r\nSubject: s\r\n\r\nTo: not@a.header\r\n"
    msg = MessageView.from_bytes(raw)
    assert msg.to == ["x@y.z", "w@y.z"] and msg.get("subject") == "s"
    assert MessageView.from_bytes(b"\r\nTo: a@b.c").to == []
    assert header_block(b"A: 1\nB: 2\n\nbody") == b"A: 1\nB: 2"
    lf = MessageView.from_bytes(b"From MAILER-DAEMON Thu Jan 1 00:00:00 2026\nTo: a@b.c\n\nx")
    assert lf.to == ["a@b.c"]
    junk = MessageView.from_bytes(b"\xff\xfe garbage\r\n: no name\r\nTo : a@b.c\r\n\r\n")
    assert junk.to == ["a@b.c"]
    assert MessageView.from_bytes(b"").items() == []


def test_header_view_derived_values() -> None:
    msg = MessageView.from_text(
        "Content-Type: MULTIPART/Report; report-type=delivery-status\nAuto-Submitted: Auto-Replied; x=1\n"
        "Resent-To: r@x.y\nResent-Cc: s@x.y\nDelivered-To: d@x.y\nX-Odoo-Objects: crm.lead-7\n\n")
    assert msg.content_type == "multipart/report" and msg.is_report
    assert msg.auto_submitted == "auto-replied" and msg.is_auto_submitted
    assert msg.odoo_recipients == ["d@x.y", "r@x.y", "s@x.y"] and msg.odoo_to == ["d@x.y"]
    assert msg.odoo_objects == ("crm.lead", 7)
    assert MessageView.from_text("Content-Type: nonsense\n\n").content_type == "text/plain"
    assert not MessageView.from_text("Content-Type: text/plain\n\n").is_report


# -- reply inputs ------------------------------------------------------------------------------------------


def test_reference_ids_mirror_odoo_step_3() -> None:
    refs = " ".join(f"<id{i}@x>" for i in range(40))
    msg = MessageView.from_text(f"References: {refs} <a-openerp-reply_to@x>\nIn-Reply-To: <irt@x>\n\n")
    ids = reference_ids(msg)
    assert len(ids) == 32 and ids[0] == "<id8@x>" and ids[-1] == "<id39@x>"
    assert reference_ids(MessageView.from_text("In-Reply-To: <irt@x>\n\n")) == ["<irt@x>"]
    assert reference_ids(MessageView.from_text("References: garbage\nIn-Reply-To: <irt@x>\n\n")) == []
    assert unfold_references("<a@\r\n b> <c@d>") == ["<a@b>", "<c@d>"]


def test_pick_reply_prefers_the_newest_message_on_the_instance() -> None:
    known = {
        "<a>": KnownMessage("odoo", "m", 1, "<a>", id=5),
        "<b>": KnownMessage("odoo", "m", 2, "<b>", id=3),
        "<c>": KnownMessage("other", "m", 3, "<c>", id=9),
        "<d>": KnownMessage("odoo", "m", 4, "<d>", source="relayed"),
    }
    assert pick_reply(["<a>", "<b>", "<c>", "<d>"], known, "odoo").res_id == 1  # type: ignore[union-attr]
    assert pick_reply(["<d>"], known, "odoo").res_id == 4  # type: ignore[union-attr]
    assert pick_reply(["<c>"], known, "odoo") is None


def test_reply_through_a_relayed_message_id() -> None:
    mid = "<relayed@gw>"
    known = {mid: KnownMessage(INSTANCE, GATEWAY, R_ID, mid, source="relayed")}
    [d] = decide(make_router(), mail(to=f"unknown@{D}", extra=[("In-Reply-To", mid)]), known=known)
    assert (d.route, d.thread_id, d.rule) == ("reply", R_ID, "reply.relayed")


# -- loop guard --------------------------------------------------------------------------------------------


def test_loop_guard_window_threshold_and_bounds() -> None:
    g = LoopGuard(max_keys=2)
    for t in (0.0, 10.0, 20.0):
        g.record("A@x.y", "odoo", t, "m")
    assert g.count("a@x.y", "odoo", 20.0, 60.0, "m") == 3
    assert g.count("a@x.y", "odoo", 75.0, 60.0, "m") == 1
    assert g.check("a@x.y", "odoo", 20.0, minutes=1, threshold=3, target="m")
    assert not g.check("a@x.y", "odoo", 20.0, minutes=1, threshold=0, target="m")  # 0: left to Odoo
    assert not g.check("a@x.y", "odoo", 20.0, minutes=1, threshold=3, target="other")
    g.record("", "odoo", 0.0, "m")
    g.record("<>", "odoo", 0.0, "m")
    assert len(g) == 1
    g.record("b@x.y", "odoo", 30.0, "m")
    g.record("c@x.y", "odoo", 30.0, "m")
    assert len(g) == 2 and g.count("a@x.y", "odoo", 30.0, 60.0, "m") == 0
    assert target_key("m", None) == "m" and target_key("m", 3) == "m/3" and target_key(None, 3) is None


def test_record_counts_only_when_envelope_sender_is_the_from() -> None:
    router = make_router(loop_minutes=30, loop_threshold=1)
    d = router.precheck(GROUPS, sender="s@x.y", now=0).decision
    assert d is not None
    router.record("s@x.y", [d], 0.0, msg=mail(email_from="other@x.y"))
    assert router.precheck(GROUPS, sender="s@x.y", now=1).accepted
    router.record("s@x.y", [d, d], 0.0, msg=mail(email_from="S <S@X.Y>"))
    pre = router.precheck(GROUPS, sender="s@x.y", now=1)
    assert not pre.accepted and pre.smtp.startswith("451 4.7.1")
    assert router.loop_guard.count("s@x.y", INSTANCE, 1, 60, GATEWAY) == 1  # once per message and target
    # The guard survives a directory swap.
    assert not router.with_directory(router.directory).precheck(GROUPS, sender="s@x.y", now=1).accepted
    # Bounces are never counted nor refused by the guard.
    assert router.precheck(f"bounce.test@{D}", sender="s@x.y", now=1).accepted


def test_loop_guard_off_by_policy() -> None:
    router = make_router(loop_minutes=30, loop_threshold=1)
    router = router.with_policy(dataclasses.replace(router.policy, loop_guard=False))
    d = router.precheck(GROUPS, sender="s@x.y", now=0).decision
    assert d is not None
    router.record("s@x.y", [d], 0.0)
    assert router.precheck(GROUPS, sender="s@x.y", now=1).accepted


# -- the router: gateway rules ----------------------------------------------------------------------------


def _two_instances() -> Router:
    a = InstanceDirectory("a", domains=(AliasDomain(1, "a.test"),), aliases=(Alias(1, "sales", "a.test", "crm.lead"),))
    b = InstanceDirectory("b", domains=(AliasDomain(1, "b.test"),),
                          aliases=(Alias(1, "sales", "b.test", "crm.lead", incoming_local=True),))
    directory = Directory.build([a], {"a.test": "a", "b.test": "b", "bücher.example": "a"})
    policy = RoutingPolicy.build([InstancePolicy("a", ("a.test",)), InstancePolicy("b", ("b.test",))])
    router = Router(directory, policy)
    return router.with_directory(directory.with_instance(b))


def test_relay_readiness_and_idn() -> None:
    router = make_router()
    assert router.precheck("x@elsewhere.example").smtp.startswith("550 5.7.1")
    assert router.precheck("not an address").smtp.startswith("501 5.1.3")
    two = _two_instances()
    assert two.precheck("sales@a.test").accepted and two.precheck("sales@b.test").accepted
    assert two.owner_of("xn--bcher-kva.example") == "a" and two.owner_of("BÜCHER.example.") == "a"
    not_ready = Router(Directory.build([], {"a.test": "a"}), RoutingPolicy())
    pre = not_ready.precheck("sales@a.test")
    assert (pre.accepted, pre.code, pre.status, pre.instance) == (False, 451, "4.3.0", "a")
    [d] = not_ready.route(MessageView(), ["sales@a.test"], {})
    assert is_deferral(d) and d.rule == "directory.unavailable"


def test_each_instance_sees_the_message_with_its_own_directory() -> None:
    router = _two_instances()
    # b's incoming-local alias "sales" matches sales@a.test in the headers; a's alias is a's only.
    msg = MessageView.from_text("From: s@x.y\nTo: sales@a.test\nCc: other@b.test\n\n")
    da, db = router.route(msg, ["sales@a.test", "other@b.test"], {})
    assert (da.instance, da.route, da.alias) == ("a", "alias", "sales@a.test")
    assert (db.instance, db.route, db.alias) == ("b", "alias", "sales@b.test")
    assert [p.instance for p in plan_deliveries([da, db])] == ["a", "b"]
    # A reply known on a does not make mail to b a reply.
    known = {"<m>": KnownMessage("a", "crm.lead", 3, "<m>", id=1)}
    msg = MessageView.from_text("To: x@a.test, y@b.test\nIn-Reply-To: <m>\n\n")
    da, db = router.route(msg, ["x@a.test", "y@b.test"], known)
    assert (da.route, da.thread_id) == ("reply", 3) and db.route == "refuse"


def test_with_directory_reuses_unchanged_indexes() -> None:
    router = _two_instances()
    again = router.with_directory(router.directory)
    assert again.index("a") is router.index("a") and again.loop_guard is router.loop_guard
    changed = router.directory.with_instance(InstanceDirectory("a", domains=(AliasDomain(1, "a.test"),)))
    assert router.with_directory(changed).index("a") is not router.index("a")
    assert not router.with_directory(changed).precheck("sales@a.test").accepted


def test_precheck_never_answers_5xx_on_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    router = make_router()

    def boom(*_a: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(router, "_precheck", boom)
    pre = router.precheck(GROUPS)
    assert (pre.accepted, pre.code, pre.rule) == (False, 451, "internal.error")


def test_capitalised_alias_domain_never_matches_as_in_odoo() -> None:
    inst = InstanceDirectory("odoo", domains=(AliasDomain(1, "Caps.Test"),),
                             aliases=(Alias(1, "sales", "Caps.Test", "m"),))
    router = Router(Directory.build([inst], {"caps.test": "odoo"}), RoutingPolicy())
    pre = router.precheck("sales@caps.test")
    assert not pre.accepted and "stored with capitals" in (pre.decision.reason if pre.decision else "")
    assert router.precheck("bounce@caps.test").accepted  # the gateway's own bounce path is case-insensitive


# -- catchall + subaddress (the gateway's addition) ---------------------------------------------------------


SO = ReferencePattern.compile(r"SO-?(\d+)", "sale.order", "name", 0)


def test_subaddress_model_id_and_reference_patterns() -> None:
    router = make_router(patterns=[SO])
    pre = router.precheck(f"catchall.test+sale.order-42@{D}")
    assert pre.accepted and pre.decision is not None
    assert (pre.decision.route, pre.decision.model, pre.decision.thread_id) == ("subaddress", "sale.order", 42)
    pre = router.precheck(f"catchall.test+SO-00042@{D2}")
    assert pre.accepted and pre.decision is not None and pre.decision.lookup == ("sale.order", "name", "SO-00042")
    [d] = decide(router, mail(to=f"catchall.test+sale.order-42@{D}"))
    assert (d.route, d.model, d.thread_id, d.rule) == ("subaddress", "sale.order", 42, "subaddress.model_id")
    [plan] = plan_deliveries([d])
    assert (plan.model, plan.thread_id) == ("sale.order", 42)
    assert "sale.order/42" in explain([d])


def test_subaddress_group_and_allow_list() -> None:
    grouped = ReferencePattern.compile(r"INV/(?P<year>\d{4})/(\d+)", "account.move", "name", "year")
    router = make_router(patterns=[grouped], subaddress_models=frozenset({"crm.lead"}))
    pre = router.precheck(f"catchall.test+INV/2026/7@{D}")
    assert pre.decision is not None and pre.decision.lookup == ("account.move", "name", "2026")
    assert router.precheck(f"catchall.test+crm.lead-3@{D}").accepted
    refused = router.precheck(f"catchall.test+res.users-2@{D}")
    assert not refused.accepted and refused.rule == "subaddress.invalid"
    assert ReferencePattern.compile(r"(x)", "m", group=5).match("x") is None


def test_subaddress_loses_to_an_alias_and_shares_its_target() -> None:
    router = make_router(patterns=[SO], fallback=FallbackPolicy("deliver", "crm.lead"))
    sub = f"catchall.test+sale.order-42@{D}"
    # Odoo uses thread_id only when no alias matched: an alias in To wins.
    ds = decide(router, mail(to=f"{sub}, {GROUPS}"))
    assert [d.route for d in ds] == ["alias", "alias"]
    # Unknown recipient plus a subaddress: the whole message lands on the subaddress target (one call).
    ds = decide(router, mail(to=f"unknown@{D}, {sub}"))
    assert [(d.route, d.model, d.thread_id) for d in ds] == [("subaddress", "sale.order", 42)] * 2
    assert ds[0].rule == "subaddress.other_recipient"
    [plan] = plan_deliveries(ds)
    assert (plan.model, plan.thread_id) == ("sale.order", 42)


def test_fallback_to_a_record_and_through_another_recipient() -> None:
    router = make_router(fallback=FallbackPolicy("deliver", "helpdesk.ticket", 5, frozenset({D2})))
    ds = decide(router, mail(to=f"a@{D}, b@{D2}"))
    assert [(d.route, d.model, d.thread_id, d.rule) for d in ds] == [
        ("fallback", "helpdesk.ticket", 5, "fallback.other_recipient"),
        ("fallback", "helpdesk.ticket", 5, "fallback.deliver")]


# -- what the worker writes as Delivered-To ----------------------------------------------------------------


def test_delivered_to_only_for_recipients_the_headers_hide() -> None:
    msg = mail(to=GROUPS, cc=f"test.container@{D}")
    d = [RouteDecision(GROUPS, "alias", INSTANCE), RouteDecision(f"test.container@{D}", "alias", INSTANCE),
         RouteDecision(f"hidden@{D}", "alias", INSTANCE)]
    [plan] = plan_deliveries(d)
    assert plan.delivered_to(msg.odoo_recipients) == (f"hidden@{D}",)
    assert added_delivered_to(msg, [GROUPS.upper(), f"Hidden@{D}"]) == [f"hidden@{D}"]


# -- decisions and explanations ----------------------------------------------------------------------------


def test_decision_helpers_and_json_shape() -> None:
    ds = decide(make_router(), mail(to=f"{GROUPS}, {CATCHALL}, unknown@elsewhere.example",
                                    extra=[("In-Reply-To", M0)]), known=KNOWN)
    assert set(ds[0].to_dict()) == {"recipient", "route", "instance", "model", "thread_id", "alias", "rule", "reason"}
    assert [d.route for d in ds] == ["reply", "reply", "refuse"]
    assert not is_discard(ds[2]) and not is_deferral(ds[2])
    text = explain(ds)
    assert "reply on odoo mail.test.gateway/7" in text and "[550 5.7.1]" in text and "rule:   reply.in_reply_to" in text
    assert header_recipients(mail(to="A@x.y, a@X.Y", cc="b@x.y")) == ["A@x.y", "b@x.y"]


def test_check_message_accepts_everything_but_configured_auto_submitted_alias_mail() -> None:
    router = make_router(auto_submitted="refuse")
    msg = mail(extra=[("Auto-Submitted", "auto-generated")])
    res = router.check_message(msg, [GROUPS, CATCHALL, "x@elsewhere.example"])
    assert [p.accepted for p in res] == [False, True, True]
    assert res[0].smtp.startswith("550 5.7.1")
    assert all(p.accepted for p in make_router().check_message(msg, [GROUPS]))


def test_followers_alias_parent_record_and_domain_case_reasons() -> None:
    a = Alias(20, "team", D, GATEWAY, contact="followers", force_thread_id=R_ID)
    [d] = decide(make_router(a), mail(to=f"team@{D}"))
    assert "posts on mail.test.gateway record 7" in d.reason and "followers of its record" in d.reason
