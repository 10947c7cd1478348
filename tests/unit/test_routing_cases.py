"""Conformance: Odoo 19's routing cases (what its mail-gateway tests assert), each encoded as expected decisions.

Cases are encoded directly (not parsed from the .md). Cases about parsing bodies, authors, parents,
subtypes, duplicates and Odoo's own mails are Odoo's business and are listed as out of scope in
docs/routing.md. Where the gateway adds something (VERP, catchall+subaddress, Delivered-To for recipients
the headers do not show, the RCPT-time relay check), the test says so.
"""

from __future__ import annotations

from routing.address import sanitize_alias_name
from routing.directory import Alias
from routing.message import MessageView
from routing.policy import FallbackPolicy
from routing.replies import KnownMessage
from tests.unit.routing_fixture import (
    BOUNCE,
    BOUNCE2,
    CATCHALL,
    CATCHALL2,
    CONTAINER,
    D2,
    GATEWAY,
    GROUPS,
    GROUPS2,
    INSTANCE,
    KNOWN,
    M0,
    R_ID,
    D,
    decide,
    mail,
    make_router,
    of,
)

UNKNOWN = f"unknown@{D}"


def routes(decisions: list) -> list[tuple[str, str]]:
    return [(d.recipient, d.route) for d in decisions]


# -- A. Parsing (only what routing reads) -----------------------------------------------------------------


def test_case_05_forwarded_mail_recipients_include_delivered_to_and_to() -> None:
    msg = mail(to=f"Fw <{UNKNOWN}>", extra=[("Delivered-To", GROUPS)])
    assert msg.odoo_to == [GROUPS, UNKNOWN]
    assert set(msg.odoo_recipients) == {GROUPS, UNKNOWN}
    assert routes(decide(make_router(), msg)) == [(GROUPS, "alias"), (UNKNOWN, "alias")]


def test_case_08_dsn_without_final_recipient_is_a_bounce_without_crash() -> None:
    msg = mail(to=BOUNCE, email_from="MAILER-DAEMON@mail.example.com",
               content_type='multipart/report; report-type=delivery-status; boundary="x"')
    assert [d.route for d in decide(make_router(), msg)] == ["bounce"]


def test_case_09_bounce_with_verp_looking_to_is_a_bounce_by_its_from() -> None:
    msg = mail(to=f"bounce.test+43-{GATEWAY}-{R_ID}@{D}", email_from="MAILER-DAEMON <mailer-daemon@example.com>")
    # Odoo 19 recognises it by From; the gateway also by the VERP envelope recipient.
    d = decide(make_router(), msg, [UNKNOWN])[0]
    assert (d.route, d.rule) == ("bounce", "bounce.mailer_daemon")


def test_case_10c_encoded_and_raw_utf8_header_names_route() -> None:
    raw = (
        "From: =?utf-8?b?U3lsdmllIEzDqWxpdHJl?= <test.sylvie.lelitre@agrolait.com>\r\n"
        f"To: =?iso-8859-1?q?Gr=E9goire?= <{GROUPS}>, Żaneta <{CONTAINER}>\r\n"
        "Subject: =?iso-8859-8-i?B?7eXs?=\r\n\r\nbody"
    ).encode()
    msg = MessageView.from_bytes(raw)
    assert msg.to == [GROUPS, CONTAINER]
    assert msg.subject == "םול"
    assert routes(decide(make_router(), msg)) == [(GROUPS, "alias"), (CONTAINER, "alias")]


# -- B. Alias -> new record / update ----------------------------------------------------------------------


def test_case_11_basic_alias_creates_a_record() -> None:
    [d] = decide(make_router(), mail(to=GROUPS))
    assert (d.route, d.instance, d.model, d.thread_id, d.alias, d.rule) == (
        "alias", INSTANCE, GATEWAY, None, GROUPS, "alias.full_address")
    assert "creates a mail.test.gateway record" in d.reason


def test_case_13_force_thread_alias_updates_record_r() -> None:
    update = Alias(10, "test.update", D, GATEWAY, force_thread_id=R_ID)
    [d] = decide(make_router(update), mail(to=f"test.update@{D}"))
    assert (d.route, d.model, d.thread_id) == ("alias", GATEWAY, R_ID)


def test_case_14_two_creation_aliases_of_two_models_give_two_routes() -> None:
    ds = decide(make_router(), mail(to=f"{GROUPS}, {CONTAINER}"))
    assert [(d.route, d.model, d.alias) for d in ds] == [
        ("alias", GATEWAY, GROUPS), ("alias", "mail.test.container", CONTAINER)]
    assert CONTAINER in ds[0].reason  # each says the message has other alias routes too


def test_case_14b_two_creation_aliases_of_the_same_model_to_and_cc() -> None:
    other = Alias(11, "groups.other", D, GATEWAY)
    ds = decide(make_router(other), mail(to=GROUPS, cc=f"groups.other@{D}"))
    assert [(d.route, d.alias) for d in ds] == [("alias", GROUPS), ("alias", f"groups.other@{D}")]


# -- C. Alias contact policy (predicted where the directory allows, otherwise left to Odoo) ---------------


def test_case_17_everyone_policy_creates() -> None:
    [d] = decide(make_router(), mail(to=GROUPS))
    assert d.route == "alias" and "partners" not in d.reason and "followers" not in d.reason


def test_case_18_19_partners_policy_is_left_to_odoo() -> None:
    partners = Alias(12, "partners", D, GATEWAY, contact="partners")
    for sender in ('"Sylvie" <test.sylvie.lelitre@agrolait.com>', "VALID.LELITRE@AGROLAIT.COM"):
        [d] = decide(make_router(partners), mail(to=f"partners@{D}", email_from=sender))
        assert d.route == "alias" and d.alias == f"partners@{D}"
        assert "known as partners" in d.reason and "may refuse" in d.reason


def test_case_20_21_followers_policy_with_parent_record_is_left_to_odoo() -> None:
    followers = Alias(13, "followers", D, GATEWAY, contact="followers", parent_model=GATEWAY, parent_thread_id=R_ID)
    [d] = decide(make_router(followers), mail(to=f"followers@{D}"))
    assert d.route == "alias" and "followers of its record" in d.reason


def test_case_21b_followers_alias_without_any_record_is_predicted_refused_by_odoo() -> None:
    broken = Alias(14, "nobody", D, GATEWAY, contact="followers")
    [d] = decide(make_router(broken), mail(to=f"nobody@{D}"))
    # Odoo refuses it itself (configuration error, alias marked invalid); the gateway says so.
    assert d.route == "alias" and "configuration error" in d.reason


def test_case_24_refused_alias_in_to_in_cc_or_second_in_to() -> None:
    partners = Alias(12, "partners", D, GATEWAY, contact="partners")
    router = make_router(partners)
    for msg in (mail(to=f"partners@{D}"), mail(to=UNKNOWN, cc=f"partners@{D}"),
                mail(to=f"{UNKNOWN}, partners@{D}")):
        d = of(decide(router, msg), f"partners@{D}")
        assert d.route == "alias" and "may refuse" in d.reason


def test_case_24b_one_accepting_and_one_refusing_alias_in_to() -> None:
    partners = Alias(12, "partners", D, "mail.test.container", contact="partners")
    ds = decide(make_router(partners), mail(to=f"{GROUPS}, partners@{D}"))
    assert [(d.route, d.alias) for d in ds] == [("alias", GROUPS), ("alias", f"partners@{D}")]
    assert "may refuse" in ds[1].reason and "may refuse" not in ds[0].reason.split("(also")[0]


# -- E. Address matching ----------------------------------------------------------------------------------


def test_case_33_alias_without_domain_never_matches() -> None:
    router = make_router(Alias(15, "nodomain", None, GATEWAY))
    [d] = decide(router, mail(to=f"nodomain@{D}"))
    assert (d.route, d.rule) == ("refuse", "refuse.no_route")
    assert router.precheck(f"nodomain@{D}").code == 550


def test_case_34_foreign_domain_matches_only_incoming_local_aliases() -> None:
    local = Alias(16, "local", D, GATEWAY, incoming_local=True)
    strict = Alias(17, "strict", D, "mail.test.container")
    router = make_router(local, strict)
    # Odoo's header rule: local@bonjour.com reaches the incoming-local alias, strict@bonjour.com nothing.
    d = decide(router, mail(to="local@bonjour.com", cc=UNKNOWN), [UNKNOWN])[0]
    assert (d.route, d.alias, d.rule) == ("alias", f"local@{D}", "alias.other_recipient")
    d = decide(router, mail(to="strict@bonjour.com", cc=UNKNOWN), [UNKNOWN])[0]
    assert d.route == "refuse"
    # At RCPT time a foreign domain is refused before alias matching: the gateway is not a relay.
    assert (router.precheck("local@bonjour.com").code, router.precheck("local@bonjour.com").status) == (550, "5.7.1")
    # ... but every domain of ours reaches the incoming-local alias.
    pre = router.precheck(f"local@{D2}")
    assert pre.accepted and pre.rule == "alias.incoming_local"


def test_case_34b_alias_name_under_another_of_our_domains_does_not_match() -> None:
    router = make_router(Alias(18, "onlyd2", D2, GATEWAY))
    [d] = decide(router, mail(to=f"onlyd2@{D}"))
    assert d.route == "refuse"
    assert router.precheck(f"onlyd2@{D}").code == 550 and router.precheck(f"onlyd2@{D2}").accepted


def test_case_35_allowed_domains_restrict_local_part_matching() -> None:
    local = Alias(16, "local", D, GATEWAY, incoming_local=True)
    router = make_router(local, allowed=["hello.com"])
    for to, expected in (("local@bonjour.com", "refuse"), ("local@hello.com", "alias"), (f"local@{D2}", "alias")):
        d = decide(router, mail(to=to, cc=UNKNOWN), [UNKNOWN])[0]
        assert d.route == expected, to
    # Alias domain names are always allowed, so at RCPT time every one of our alias domains still matches.
    assert router.precheck(f"local@{D2}").accepted


def test_case_37b_upper_case_alias_address_matches() -> None:
    router = make_router()
    [d] = decide(router, mail(to=f"GROUPS@{D.upper()}"))
    assert (d.route, d.alias) == ("alias", GROUPS)
    assert router.precheck(f"<GROUPS@{D.upper()}>").accepted


def test_case_39_alias_name_sanitation() -> None:
    assert sanitize_alias_name("bidule...inc.") == "bidule.inc"
    assert sanitize_alias_name("hélène.prôvâïder") == "helene.provaider"
    assert sanitize_alias_name("😊") == "-"
    assert sanitize_alias_name("ぁ") == "?"


def test_case_40_same_alias_name_on_two_domains() -> None:
    ds = decide(make_router(), mail(to=f"{GROUPS}, {GROUPS2}"))
    assert [(d.alias, d.model) for d in ds] == [(GROUPS, GATEWAY), (GROUPS2, "mail.test.gateway.company")]


def test_case_41_plus_addressing_no_match() -> None:
    router = make_router()
    [d] = decide(router, mail(to=f"groups+tag@{D}"))
    assert (d.route, d.rule) == ("refuse", "refuse.no_route")
    pre = router.precheck(f"groups+tag@{D}")
    assert (pre.accepted, pre.code, pre.status) == (False, 550, "5.1.1")


def test_case_42_only_delivered_to_to_cc_resent_are_read() -> None:
    router = make_router()
    for hint in ("X-Original-To", "Envelope-To", "X-Forwarded-To"):
        [d] = decide(router, mail(to=UNKNOWN, extra=[(hint, GROUPS)]))
        assert d.route == "refuse", hint
    d = of(decide(router, mail(to=UNKNOWN, extra=[("Delivered-To", GROUPS)])), GROUPS)
    assert d.route == "alias"
    [d] = decide(router, mail(to=UNKNOWN, extra=[("Resent-To", GROUPS)]))
    assert (d.route, d.alias) == ("alias", GROUPS)


def test_case_42_gateway_adds_delivered_to_for_recipients_the_headers_hide() -> None:
    # Gateway addition: the envelope recipient (here only in X-Original-To) is written as Delivered-To.
    [d] = decide(make_router(), mail(to="someone@example.com", extra=[("X-Original-To", GROUPS)]), [GROUPS])
    assert (d.route, d.rule) == ("alias", "alias.full_address")


def test_case_42b_no_recipient_headers_and_no_reference() -> None:
    msg = mail(to=None)
    assert decide(make_router(), msg) == []  # nothing to explain without recipients
    [d] = decide(make_router(), msg, [UNKNOWN])
    assert d.route == "refuse"


# -- F. Replies, references, Message-Id forms -------------------------------------------------------------


def test_case_43_in_reply_to_m0_with_unknown_to_posts_on_r() -> None:
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("In-Reply-To", M0)]))
    assert (d.route, d.model, d.thread_id, d.rule) == ("reply", GATEWAY, R_ID, "reply.in_reply_to")


def test_case_44_folded_references_with_other_ids_first() -> None:
    refs = f"<other1@x>\r\n <other2@x>\r\n\t{M0}"
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", refs)]))
    assert (d.route, d.thread_id, d.rule) == ("reply", R_ID, "reply.references")


def test_case_45_reference_to_an_external_message_id_stored_on_m0() -> None:
    ext = "<external-thread-id@gmail.com>"
    known = {ext: KnownMessage(INSTANCE, GATEWAY, R_ID, ext, id=101)}
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", ext)]), known=known)
    assert (d.route, d.thread_id) == ("reply", R_ID)


def test_case_46_id_folded_inside_references_is_unfolded() -> None:
    folded = M0.replace("@host>", "@\r\n host>")
    msg = mail(to=UNKNOWN, extra=[("References", f"<x@y> {folded}")])
    assert make_router().reference_ids(msg) == ["<x@y>", M0]
    assert decide(make_router(), msg)[0].route == "reply"


def test_case_46b_id_folded_inside_in_reply_to_routes_to_r() -> None:
    folded = M0.replace("openerp-", "openerp-\r\n ")
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("In-Reply-To", folded)]))
    assert (d.route, d.thread_id) == ("reply", R_ID)


def test_case_46c_unknown_references_hide_a_known_in_reply_to() -> None:
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", "<unknown@x>"), ("In-Reply-To", M0)]))
    assert (d.route, d.rule) == ("refuse", "refuse.no_route")


def test_case_46d_unknown_in_reply_to_known_references() -> None:
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", M0), ("In-Reply-To", "<unknown@x>")]))
    assert (d.route, d.thread_id) == ("reply", R_ID)


def test_case_47_odoo_format_id_not_in_the_database_is_not_parsed() -> None:
    ghost = f"<999-openerp-{R_ID}-{GATEWAY}@host>"
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("In-Reply-To", ghost)]), known={})
    assert d.route == "refuse"


def test_case_48_reply_to_other_model_alias_is_a_forward() -> None:
    [d] = decide(make_router(), mail(to=CONTAINER, extra=[("In-Reply-To", M0)]))
    assert (d.route, d.model, d.alias, d.rule) == ("alias", "mail.test.container", CONTAINER, "alias.forward")


def test_case_49_reply_to_same_model_alias_stays_a_reply() -> None:
    [d] = decide(make_router(), mail(to=GROUPS, extra=[("In-Reply-To", M0)]))
    assert (d.route, d.thread_id, d.alias) == ("reply", R_ID, GROUPS)


def test_case_50_other_model_alias_in_cc_does_not_forward() -> None:
    ds = decide(make_router(), mail(to=CATCHALL, cc=CONTAINER, extra=[("In-Reply-To", M0)]))
    assert routes(ds) == [(CATCHALL, "reply"), (CONTAINER, "reply")]
    assert all(d.thread_id == R_ID for d in ds)


def test_case_51_reply_with_same_and_other_model_aliases_only_other_creates() -> None:
    for to in (f"{GROUPS}, {CONTAINER}", f"{CONTAINER}, {GROUPS}"):
        ds = decide(make_router(), mail(to=to, extra=[("In-Reply-To", M0)]))
        assert [(d.route, d.alias, d.rule) for d in ds if d.recipient == CONTAINER] == [
            ("alias", CONTAINER, "alias.forward")]
        assert of(ds, GROUPS).alias == CONTAINER  # the same-model alias is narrowed away
    update = Alias(10, "test.update", D, GATEWAY, force_thread_id=R_ID)  # ..._bypass_update_alias
    ds = decide(make_router(update), mail(to=f"test.update@{D}, {CONTAINER}", extra=[("In-Reply-To", M0)]))
    assert {d.alias for d in ds} == {CONTAINER}


def test_case_51b_reply_to_partners_only_same_model_alias_may_be_refused() -> None:
    partners = Alias(12, "partners", D, GATEWAY, contact="partners")
    [d] = decide(make_router(partners), mail(to=f"partners@{D}", extra=[("In-Reply-To", M0)]))
    assert (d.route, d.thread_id, d.alias) == ("reply", R_ID, f"partners@{D}")
    assert "may refuse" in d.reason


def test_case_55_reply_to_catchall_and_reply_to_tagged_ids() -> None:
    [d] = decide(make_router(), mail(to=f'"Administrator" <{CATCHALL}>', extra=[("In-Reply-To", M0)]))
    assert (d.route, d.thread_id) == ("reply", R_ID)
    tagged = "<123.456-openerp-reply_to@host>"  # reply_to_force_new: ignored by routing
    known = {tagged: KnownMessage(INSTANCE, GATEWAY, R_ID, tagged, id=102)}
    [d] = decide(make_router(), mail(to=GROUPS, extra=[("In-Reply-To", tagged)]), known=known)
    assert (d.route, d.thread_id) == ("alias", None)


def test_case_56_reply_to_a_message_without_model_creates_through_the_alias() -> None:
    private = "<private@host>"
    known = {private: KnownMessage(INSTANCE, None, None, private, id=103)}
    [d] = decide(make_router(), mail(to=GROUPS, extra=[("In-Reply-To", private)]), known=known)
    assert (d.route, d.model, d.thread_id) == ("alias", GATEWAY, None)


def test_case_57_reply_while_to_is_an_alias_of_the_author() -> None:
    [d] = decide(make_router(), mail(to=GROUPS, email_from="employee@test.mycompany.com",
                                     extra=[("In-Reply-To", M0)]))
    assert (d.route, d.thread_id) == ("reply", R_ID)


def test_case_58b_reply_through_ancestry_references_after_message_id_rewrite() -> None:
    older = "<older-openerp@host>"
    known = {**KNOWN, older: KnownMessage(INSTANCE, GATEWAY, R_ID, older, id=90)}
    refs = f"{older} {M0} <rewritten-by-esp@amazonses.com>"
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", refs)]), known=known)
    assert (d.route, d.thread_id) == ("reply", R_ID)
    # Several records referenced: the newest mail.message (highest id) wins, as Odoo's `order id desc`.
    other = "<other-record@host>"
    known[other] = KnownMessage(INSTANCE, "mail.test.container", 3, other, id=200)
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("References", f"{other} {M0}")]), known=known)
    assert (d.model, d.thread_id) == ("mail.test.container", 3)


# -- G. Bounces -------------------------------------------------------------------------------------------


def test_case_59_plain_mail_to_the_bounce_address() -> None:
    for addr in (BOUNCE, BOUNCE2):
        [d] = decide(make_router(), mail(to=addr))
        assert (d.route, d.rule) == ("bounce", "bounce.address")
    assert make_router().precheck(BOUNCE).accepted


def test_case_60_bounce_address_second_in_to() -> None:
    ds = decide(make_router(), mail(to=f"{GROUPS}, {BOUNCE}"))
    assert routes(ds) == [(GROUPS, "bounce"), (BOUNCE, "bounce")]


def test_case_61_from_mailer_daemon_to_an_alias() -> None:
    for sender in ("MAILER-DAEMON@example.com", '"Mail Delivery System" <Mailer-Daemon@mx.example.com>'):
        [d] = decide(make_router(), mail(to=GROUPS, email_from=sender))
        assert (d.route, d.rule) == ("bounce", "bounce.mailer_daemon")


def test_case_62_63_dsn_to_the_bounce_address() -> None:
    msg = mail(to=BOUNCE, email_from="postmaster@example.com",
               content_type='multipart/report; report-type=delivery-status; boundary="b"')
    assert [d.route for d in decide(make_router(), msg)] == ["bounce"]


def test_case_66_dsn_sent_to_an_alias_is_still_a_bounce() -> None:
    for ctype in ('multipart/report; report-type=delivery-status; boundary="b"',
                  'multipart/report: report-type="delivery-status"; boundary=b'):
        [d] = decide(make_router(), mail(to=GROUPS, email_from="whatever@example.com", content_type=ctype))
        assert (d.route, d.rule) == ("bounce", "bounce.dsn"), ctype


def test_case_69_verp_bounce_address() -> None:
    verp = f"bounce.test+42-crm.lead-7@{D}"
    # Odoo 19: not a bounce by address; plain mail routes nowhere.
    d = decide(make_router(), mail(to=verp, cc=UNKNOWN), [UNKNOWN])[0]
    assert d.route == "refuse"
    # Gateway addition: an envelope recipient in VERP form is the gateway's bounce path.
    [d] = decide(make_router(), mail(to=verp))
    assert (d.route, d.rule) == ("bounce", "bounce.verp")
    assert make_router().precheck(verp).accepted


def test_case_70_bounce_address_only_in_cc_is_not_a_bounce() -> None:
    ds = decide(make_router(), mail(to=GROUPS, cc=BOUNCE))
    assert of(ds, GROUPS).route == "alias"
    assert of(ds, BOUNCE).route == "bounce"  # the envelope copy for the bounce address goes to the bounce path


def test_case_70b_delivered_to_bounce_address_with_alias_in_to() -> None:
    ds = decide(make_router(), mail(to=GROUPS, extra=[("Delivered-To", BOUNCE)]))
    assert all(d.route == "bounce" for d in ds) and len(ds) == 2


# -- H. Catchall ------------------------------------------------------------------------------------------


def test_case_71_direct_write_to_catchall_is_refused() -> None:
    for to in (f'"My Super Catchall" <{CATCHALL}>', CATCHALL.upper(), CATCHALL2):
        [d] = decide(make_router(), mail(to=to))
        assert (d.route, d.rule, d.reply[0] if d.reply else None) == ("refuse", "catchall.direct", 550), to
    assert make_router().precheck(CATCHALL).accepted  # at RCPT the catchall is accepted: Odoo decides later


def test_case_72_catchall_and_alias_in_to_alias_wins() -> None:
    for to in (f"{CATCHALL}, {GROUPS}", f"{GROUPS}, {CATCHALL}"):
        ds = decide(make_router(), mail(to=to))
        assert {(d.recipient, d.route, d.alias) for d in ds} == {(CATCHALL, "alias", GROUPS), (GROUPS, "alias", GROUPS)}


def test_case_73_catchall_and_unroutable_in_to_is_refused() -> None:
    ds = decide(make_router(), mail(to=f"{CATCHALL}, {UNKNOWN}"))
    assert [(d.route, d.rule) for d in ds] == [("refuse", "catchall.unroutable")] * 2


def test_case_73b_catchall_only_in_cc_and_unroutable_to_is_no_route() -> None:
    ds = decide(make_router(), mail(to=UNKNOWN, cc=CATCHALL))
    assert [(d.route, d.rule) for d in ds] == [("refuse", "refuse.no_route")] * 2


def test_case_73c_catchall_plus_tag_is_not_the_catchall() -> None:
    router = make_router()
    [d] = decide(router, mail(to=f"catchall.test+tag@{D}"))
    assert (d.route, d.rule) == ("refuse", "subaddress.invalid")
    assert router.precheck(f"catchall.test+tag@{D}").code == 550


def test_case_73d_reply_sent_to_the_catchall() -> None:
    [d] = decide(make_router(), mail(to=CATCHALL, extra=[("In-Reply-To", M0)]))
    assert (d.route, d.thread_id) == ("reply", R_ID)


# -- I. Fallback ------------------------------------------------------------------------------------------


def test_case_74_no_alias_no_reply_fallback_model() -> None:
    router = make_router(fallback=FallbackPolicy("deliver", "crm.lead"))
    [d] = decide(router, mail(to=UNKNOWN))
    assert (d.route, d.model, d.thread_id, d.rule) == ("fallback", "crm.lead", None, "fallback.deliver")
    assert router.precheck(UNKNOWN).accepted


def test_case_74_fallback_limited_to_some_domains() -> None:
    router = make_router(fallback=FallbackPolicy("deliver", "crm.lead", domains=frozenset({D2})))
    assert decide(router, mail(to=UNKNOWN))[0].route == "refuse"
    assert decide(router, mail(to=f"unknown@{D2}"))[0].route == "fallback"
    assert not router.precheck(UNKNOWN).accepted and router.precheck(f"unknown@{D2}").accepted


def test_case_74_fallback_does_not_override_direct_catchall_refusal() -> None:
    router = make_router(fallback=FallbackPolicy("deliver", "crm.lead"))
    [d] = decide(router, mail(to=CATCHALL))
    assert d.rule == "catchall.direct"


def test_case_75_no_alias_no_reply_no_fallback() -> None:
    router = make_router()
    [d] = decide(router, mail(to=UNKNOWN))
    assert (d.route, d.reply) == ("refuse", (550, "5.1.1", "No such recipient here"))
    pre = router.precheck(UNKNOWN)
    assert (pre.accepted, pre.code, pre.status) == (False, 550, "5.1.1")


# -- K. Loops and auto-replies (tests use loop params 30 min / 5) -----------------------------------------


def test_case_82_creation_flood_is_refused_at_the_door() -> None:
    router = make_router(loop_minutes=30, loop_threshold=5)
    sender = "test.sylvie.lelitre@agrolait.com"
    now = 1_000_000.0
    decision = router.precheck(GROUPS, sender=sender, now=now).decision
    assert decision is not None
    router.record(sender, [decision], now - 7200)  # two hours ago: outside the window
    for i in range(5):
        assert router.precheck(GROUPS, sender=sender, now=now + i).accepted
        router.record(sender, [decision], now + i)
    for who in (sender, sender.upper()):
        pre = router.precheck(GROUPS, sender=who, now=now + 10)
        assert (pre.accepted, pre.code, pre.status, pre.rule) == (False, 451, "4.7.1", "loop.sender")
    assert router.precheck(GROUPS, sender=sender, now=now + 31 * 60).accepted  # the window slid


def test_case_83_reply_to_a_loop_notice_is_dropped_even_from_an_allowed_sender() -> None:
    notice = "<1.2-openerp-loop-detection-bounce-email@host>"
    router = make_router(loop_allowed=["test.sylvie.lelitre@agrolait.com"])
    for header in ("References", "In-Reply-To"):
        [d] = decide(router, mail(to=GROUPS, extra=[(header, notice)]))
        assert (d.route, d.rule, d.reply[0] if d.reply else None) == ("refuse", "loop.notice_reply", 250)


def test_case_84_allow_listed_sender_is_never_refused() -> None:
    sender = "test.sylvie.lelitre@agrolait.com"
    router = make_router(loop_minutes=30, loop_threshold=5, loop_allowed=[sender])
    decision = router.precheck(GROUPS, sender=sender, now=0.0).decision
    assert decision is not None
    for i in range(10):
        assert router.precheck(GROUPS, sender=sender, now=float(i)).accepted
        router.record(sender, [decision], float(i))


def test_case_85_one_looping_route_is_refused_per_target() -> None:
    router = make_router(loop_minutes=30, loop_threshold=5)
    sender = "flood@example.com"
    looping = router.precheck(GROUPS, sender=sender, now=0.0).decision
    assert looping is not None
    for i in range(5):
        router.record(sender, [looping], float(i))
    assert not router.precheck(GROUPS, sender=sender, now=10.0).accepted
    # Odoo counts per model: another model's alias is still open at the door (Odoo would then block the
    # whole message if it also carried the looping alias; the gateway keeps that decision to Odoo).
    assert router.precheck(CONTAINER, sender=sender, now=10.0).accepted


def test_case_88_auto_reply_forwarded_to_the_catchall_is_refused() -> None:
    [d] = decide(make_router(), mail(to=CATCHALL, extra=[("Auto-Submitted", "auto-replied")]))
    assert d.rule == "catchall.direct"


def test_case_89_auto_replies_route_like_any_mail_by_default() -> None:
    [d] = decide(make_router(), mail(to=UNKNOWN, extra=[("Auto-Submitted", "auto-replied"), ("References", M0)]))
    assert (d.route, d.thread_id) == ("reply", R_ID)
    for hdr in (("Precedence", "bulk"), ("X-Autoreply", "yes"), ("Auto-Submitted", "auto-replied")):
        [d] = decide(make_router(), mail(to=GROUPS, extra=[hdr]))
        assert d.route == "alias", hdr


def test_case_89_gateway_option_refuses_or_discards_auto_submitted_to_aliases() -> None:
    msg = mail(to=GROUPS, extra=[("Auto-Submitted", "auto-replied")])
    [d] = decide(make_router(auto_submitted="refuse"), msg)
    assert (d.route, d.rule, d.reply[0] if d.reply else None) == ("refuse", "auto_submitted.refuse", 550)
    [d] = decide(make_router(auto_submitted="discard"), msg)
    assert (d.route, d.rule, d.reply[0] if d.reply else None) == ("refuse", "auto_submitted.discard", 250)
    [pre] = make_router(auto_submitted="refuse").check_message(msg, [GROUPS])
    assert (pre.accepted, pre.code) == (False, 550)
    # Replies are not alias mail: an out-of-office answer on a thread still lands there.
    reply = mail(to=UNKNOWN, extra=[("Auto-Submitted", "auto-replied"), ("In-Reply-To", M0)])
    assert decide(make_router(auto_submitted="refuse"), reply)[0].route == "reply"
    # "Auto-Submitted: no" is not automatic.
    assert decide(make_router(auto_submitted="refuse"), mail(extra=[("Auto-Submitted", "no")]))[0].route == "alias"
