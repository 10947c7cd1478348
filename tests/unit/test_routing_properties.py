"""Property tests: whatever the headers and recipients, routing answers and never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.address import email_normalize, email_split, parse_recipient, sanitize_alias_name
from routing.decision import plan_deliveries
from routing.message import MessageView
from routing.policy import FallbackPolicy, ReferencePattern
from routing.replies import KnownMessage
from tests.unit.routing_fixture import CATCHALL, D2, GROUPS, INSTANCE, KNOWN, M0, D, make_router

KINDS = {"bounce", "reply", "alias", "subaddress", "fallback", "refuse"}
NAMES = ["From", "To", "Cc", "Delivered-To", "Resent-To", "Resent-Cc", "References", "In-Reply-To",
         "Content-Type", "Auto-Submitted", "Message-Id", "Subject", "X-Odoo-Objects"]
SNIPPETS = [GROUPS, CATCHALL, f"bounce.test@{D}", f"bounce.test+x@{D2}", f"catchall.test+sale.order-4@{D}",
            f"catchall.test+SO-1@{D2}", M0, "<", ">", ",", ";", ":", '"', "@", "=?utf-8?q?", "?=", "\r\n ",
            "MAILER-DAEMON", "multipart/report", "auto-replied", "-loop-detection-bounce-email@", "reply_to",
            "\x00", "é", "\ud7ff", " "]

text = st.lists(st.one_of(st.sampled_from(SNIPPETS), st.text(max_size=12)), max_size=8).map("".join)
headers = st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=10)), text),
                   max_size=12)
recipients = st.lists(st.one_of(st.sampled_from(SNIPPETS[:6]), text), max_size=5)

ROUTERS = [
    make_router(),
    make_router(fallback=FallbackPolicy("deliver", "crm.lead"), auto_submitted="discard",
                patterns=[ReferencePattern.compile(r"SO-(\d+)", "sale.order", "name", 1)]),
]
KNOWN_PLUS = {**KNOWN, "<x>": KnownMessage(INSTANCE, None, None, "<x>"), "<y>": KnownMessage("gone", "m", 1, "<y>")}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _render(fields: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode("utf-8", errors="surrogatepass") + b"\r\nbody"


@FAST
@given(st.binary(max_size=600))
def test_header_view_never_raises_on_bytes(raw: bytes) -> None:
    msg = MessageView.from_bytes(raw)
    for attr in ("to", "cc", "odoo_recipients", "is_report", "is_loop_notice_reply", "subject", "odoo_objects",
                 "auto_submitted", "from_address", "is_from_mailer_daemon", "content_type"):
        getattr(msg, attr)


@FAST
@given(headers, recipients, st.booleans())
def test_route_never_raises_and_answers_every_recipient(fields: list[tuple[str, str]], rcpts: list[str],
                                                          second: bool) -> None:
    router = ROUTERS[int(second)]
    msg = MessageView.from_bytes(_render(fields))
    router.reference_ids(msg)
    decisions = router.route(msg, rcpts, KNOWN_PLUS)
    assert len(decisions) == len(rcpts)
    for d in decisions:
        assert d.route in KINDS and d.rule and d.reason
        if d.route == "refuse":
            assert d.reply is not None
    plan_deliveries(decisions)
    router.check_message(msg, rcpts)


@FAST
@given(text, text)
def test_precheck_always_gives_an_smtp_answer(rcpt: str, sender: str) -> None:
    for router in ROUTERS:
        pre = router.precheck(rcpt, sender=sender, now=0.0)
        assert pre.code in (250, 451, 501, 550) and pre.accepted == (pre.code == 250)
        assert pre.smtp[:3].isdigit()


@FAST
@given(text)
def test_address_helpers_never_raise(value: str) -> None:
    email_split(value)
    email_normalize(value)
    parse_recipient(value)
    sanitize_alias_name(value)


ADDRESS_BITS = st.sampled_from([*'ab.@<> ,\t-_+éZ!#=?\'"\\();:[]', "\r\n ", "x@y", "<a@b>", "N <c@d>", '"Q" <e@f>'])


@settings(max_examples=1500, deadline=None)
@given(st.lists(ADDRESS_BITS, max_size=16).map("".join))
def test_fast_address_split_agrees_with_getaddresses(value: str) -> None:
    """The fast path for common header shapes must give exactly what Odoo's getaddresses-based split gives."""
    from email.utils import getaddresses

    from routing.address import _split_fast

    fast = _split_fast(value)
    if fast is not None:
        assert list(fast) == [(n, a) for n, a in getaddresses([value]) if a and "@" in a]
