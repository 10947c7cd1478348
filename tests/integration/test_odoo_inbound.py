"""The inbound worker in-process: real SQLite spool, real router, stand-in Odoo(s) over HTTP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import Config, parse_config
from gateway.inbound import InboundWorker, build_clients
from gateway.odoo.directory import DirectorySync
from gateway.odoo.headers import delivery_headers, stable_message_id
from gateway.spool import Direction, Envelope, SpoolEntry, SqliteSpool, State
from routing.decision import RouteDecision
from tests.odoo_standin import OdooStandin, odoo_instance_config

FAST = {"retry_initial": "0.05s", "retry_max": "0.2s", "poll_interval": "0.02s", "breaker_threshold": 100,
        "breaker_cooldown": "0.1s"}


def message(mid: str | None = "<m1@example.org>", to: str = "sales@example.com", frm: str = "ann@example.org",
            extra: str = "", body: bytes = b"hello\r\n") -> bytes:
    head = f"From: {frm}\r\nTo: {to}\r\nSubject: test\r\n" + (f"Message-Id: {mid}\r\n" if mid else "") + extra
    return head.encode() + b"\r\n" + body


class Harness:
    def __init__(self, tmp_path: Path, instances: list[dict[str, Any]], bounce_handler: Any = None,
                 **delivery: Any):
        self.config: Config = parse_config({"state_dir": str(tmp_path / "state"), "odoo": instances,
                                            "delivery": {**FAST, **delivery}, "drain_timeout": "2s"})
        self.bounce_handler = bounce_handler
        self.tmp_path = tmp_path

    async def start(self) -> Harness:
        self.spool = await SqliteSpool.open(self.tmp_path / "spool.db")
        self.clients = build_clients(self.config)
        self.sync = DirectorySync(self.config, self.clients)
        await self.sync.refresh()
        self.worker = InboundWorker(self.config, self.spool, self.clients, self.sync, hostname="gw.test",
                                    bounce_handler=self.bounce_handler)
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def put(self, raw: bytes, mail_from: str = "ann@example.org", rcpts: Sequence[str] = ("sales@example.com",),
                  **env: Any) -> str:
        envelope = Envelope(mail_from=mail_from, rcpt_tos=tuple(rcpts), intake="smtp", peer="192.0.2.7",
                            helo="client.example.org", **env)
        qid, _ = await self.spool.put(envelope, raw)
        self.worker.kick()
        return qid

    async def wait(self, qid: str, *states: State, timeout: float = 10.0) -> SpoolEntry:
        deadline = time.monotonic() + timeout
        while True:
            entry = await self.spool.get(qid)
            assert entry is not None
            if entry.state in states and entry.claimed_by is None:
                return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"{qid} is {entry.state} ({entry.last_error}), not {states}")
            await asyncio.sleep(0.02)

    async def outbound(self) -> list[SpoolEntry]:
        return await self.spool.list(direction=Direction.OUTBOUND)

    async def close(self) -> None:
        await self.worker.stop(timeout=1.0)
        self.task.cancel()
        with __import__("contextlib").suppress(asyncio.CancelledError):
            await self.task
        for c in self.clients.values():
            await c.close()
        await self.spool.close()


@pytest.fixture
async def gw(odoo_standin: OdooStandin, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    api = getattr(request, "param", "xmlrpc")
    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path, api=api, timeout="2s")]).start()
    yield h
    await h.close()


@pytest.mark.parametrize(("gw", "body"), [("xmlrpc", b"caf\xc3\xa9\r\n"), ("json2", b"caf\xc3\xa9\r\n"),
                                         ("xmlrpc", b"8-bit Latin-1: K\xf6ln \xe9t\xe9 \x80\xff\r\n")],
                         indirect=["gw"])
async def test_delivers_raw_plus_documented_headers(gw: Harness, odoo_standin: OdooStandin, body: bytes) -> None:
    raw = message(body=body)
    qid = await gw.put(raw)
    entry = await gw.wait(qid, State.DELIVERED)
    call = odoo_standin.posted()[-1]
    # sales@ is in To already: no Delivered-To for it (Odoo would read it as To a second time).
    block = delivery_headers(mail_from="ann@example.org", recipients=["sales@example.com"], queue_id=qid,
                             received_at=entry.envelope.received_at, intake="smtp", helo="client.example.org",
                             peer="192.0.2.7", hostname="gw.test", delivered_to=[])
    assert call.message == block + raw
    status = entry.rcpt_status["sales@example.com"]  # type: ignore[index]
    assert status["state"] == "delivered" and status["result"] == "posted" and status["record_id"]
    assert entry.route[0]["route"] == "alias" and entry.attempts == 1
    parsed = email.message_from_bytes(call.message, policy=email.policy.SMTP)
    assert parsed["Return-Path"] == "<ann@example.org>" and parsed["Delivered-To"] is None


async def test_message_id_added_once_and_stable_across_retries(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.script.append("serialization")  # first attempt: transient failure in Odoo
    raw = message(mid=None)
    qid = await gw.put(raw)
    entry = await gw.wait(qid, State.DELIVERED)
    calls = odoo_standin.message_calls()
    assert [c.outcome.split()[0] for c in calls] == ["fault:1", f"id:{calls[-1].outcome[3:]}"]
    expected = stable_message_id(qid, "example.com")
    assert {c.message_id for c in calls} == {expected}
    assert calls[0].message == calls[1].message  # a retry sends the very same bytes
    assert calls[1].message.endswith(f"Message-Id: {expected}\r\n".encode() + raw)  # type: ignore[union-attr]
    assert entry.attempts == 2


async def test_false_and_loop_none_count_as_delivered(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.script.extend(["false", "none"])
    with capture_logs() as logs:
        a = await gw.put(message("<a@x>"))
        ea = await gw.wait(a, State.DELIVERED)
        b = await gw.put(message("<b@x>"))
        eb = await gw.wait(b, State.DELIVERED)
    assert ea.rcpt_status["sales@example.com"]["result"] == "false"  # type: ignore[index]
    assert eb.rcpt_status["sales@example.com"]["result"] == "dropped"  # type: ignore[index]
    assert len(odoo_standin.message_calls()) == 2  # the None fault is not retried
    dropped = [x for x in logs if x["event"] == "delivery.dropped"]
    assert dropped and dropped[0]["log_level"] == "warning" and dropped[0]["queue_id"] == b
    assert not await gw.outbound()


async def test_no_route_fails_with_dsn_to_sender(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.script.append("noroute")
    qid = await gw.put(message("<nr@x>"))
    entry = await gw.wait(qid, State.FAILED)
    assert "No possible route" in (entry.last_error or "")
    [dsn] = await gw.outbound()
    assert dsn.envelope.mail_from == "" and dsn.envelope.rcpt_tos == ("ann@example.org",)
    body = await gw.spool.raw(dsn.queue_id)
    report = email.message_from_bytes(body, policy=email.policy.SMTP)
    assert report.get_content_type() == "multipart/report"
    assert b"Final-Recipient: rfc822; sales@example.com" in body and b"Message-Id: <nr@x>" in body


async def test_router_refusal_fails_without_calling_odoo(gw: Harness, odoo_standin: OdooStandin) -> None:
    qid = await gw.put(message("<nobody@x>", to="nobody@example.com"), rcpts=["nobody@example.com"])
    entry = await gw.wait(qid, State.FAILED)
    assert entry.rcpt_status["nobody@example.com"]["state"] == "failed"  # type: ignore[index]
    assert not odoo_standin.message_calls()
    assert len(await gw.outbound()) == 1


@pytest.mark.parametrize(("mail_from", "extra"), [
    ("", ""),
    ("ann@example.org", "Auto-Submitted: auto-replied\r\n"),
    ("ann@example.org", "Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n"),
])
async def test_no_dsn_to_null_sender_auto_submitted_or_bounces(gw: Harness, odoo_standin: OdooStandin,
                                                               mail_from: str, extra: str) -> None:
    odoo_standin.script.append("noroute")
    qid = await gw.put(message("<q@x>", extra=extra), mail_from=mail_from)
    await gw.wait(qid, State.FAILED)
    assert not await gw.outbound()


async def test_odoo_refusal_with_its_own_notice_fails_without_our_dsn(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.script.append("validation")  # alias crash: Odoo already sent "invalid alias" to the sender
    with capture_logs() as logs:
        qid = await gw.put(message("<v@x>"))
        await gw.wait(qid, State.FAILED)
    assert not await gw.outbound()
    assert any(x["event"] == "delivery.refused" and x["log_level"] == "error" for x in logs)


async def test_access_denied_defers_forever_with_one_error(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path)], lifetime="0.2s").start()
    odoo_standin.password = "rotated"  # our secret no longer works (Odoo re-checks it on every call)
    with capture_logs() as logs:
        ids = [await h.put(message(f"<d{i}@x>")) for i in range(3)]
        for qid in ids:
            await h.wait(qid, State.DEFERRED)
        await asyncio.sleep(0.5)  # well past the lifetime: a config problem never bounces
        errors_seen = [(await h.wait(qid, State.DEFERRED)).last_error or "" for qid in ids]
    # The oldest waits for Odoo; the sender's later mail waits behind it (keeps their order).
    assert "access denied" in errors_seen[0]
    assert all("access denied" in e or "waiting behind" in e for e in errors_seen)
    assert not await h.outbound()
    errors = [x for x in logs if x["event"] == "odoo.config_problem"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    odoo_standin.password = "secret"  # the operator fixed it: the next retries log in again
    for qid in ids:
        await h.wait(qid, State.DELIVERED)
    await h.close()


async def test_transient_failure_expires_after_lifetime_with_dsn(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path)], lifetime="0.3s").start()
    odoo_standin.set_behaviour("503")
    qid = await h.put(message("<e@x>"))
    entry = await h.wait(qid, State.FAILED)
    assert entry.attempts >= 2 and "expired" in (entry.last_error or "")
    [dsn] = await h.outbound()
    assert b"Status: 4.4.7" in await h.spool.raw(dsn.queue_id)
    await h.close()


async def test_two_instances_each_get_their_recipients(tmp_path: Path) -> None:
    with OdooStandin() as a, OdooStandin(domain="example.net") as b:
        h = await Harness(tmp_path, [odoo_instance_config(a, tmp_path, name="a"),
                                     odoo_instance_config(b, tmp_path, name="b", api="json2",
                                                          domains=["example.net"])]).start()
        rcpts = ["sales@example.com", "sales@example.net", "support@example.net"]
        # Only sales@example.com shows in To; the example.net recipients were Bcc'd.
        raw = message("<two@x>", to="sales@example.com")
        qid = await h.put(raw, rcpts=rcpts)
        entry = await h.wait(qid, State.DELIVERED)
        [ca], [cb] = a.message_calls(), b.message_calls()
        pa = email.message_from_bytes(ca.message or b"", policy=email.policy.SMTP)
        pb = email.message_from_bytes(cb.message or b"", policy=email.policy.SMTP)
        # Delivered-To is written for recipients the headers do not show, and only for them (Odoo reads it
        # as To: a Cc'd alias written there would change its decision, test_routing_cases, cases 50 and 73b).
        assert pa.get_all("Delivered-To") is None
        assert pb.get_all("Delivered-To") == ["sales@example.net", "support@example.net"]
        assert {s["instance"] for s in entry.rcpt_status.values()} == {"a", "b"}  # type: ignore[union-attr]
        await h.close()


async def test_partial_outage_retries_only_the_missing_instance(tmp_path: Path) -> None:
    with OdooStandin() as a, OdooStandin(domain="example.net") as b:
        h = await Harness(tmp_path, [odoo_instance_config(a, tmp_path, name="a"),
                                     odoo_instance_config(b, tmp_path, name="b", domains=["example.net"])]).start()
        b.down()
        rcpts = ["sales@example.com", "sales@example.net"]
        qid = await h.put(message("<p@x>", to=", ".join(rcpts)), rcpts=rcpts)
        entry = await h.wait(qid, State.DEFERRED)
        assert entry.rcpt_status["sales@example.com"]["state"] == "delivered"  # type: ignore[index]
        assert entry.next_attempt_at > entry.updated_at
        b.up()
        await h.wait(qid, State.DELIVERED)
        assert len(a.message_calls()) == 1 and len(b.posted()) == 1
        await h.close()


async def test_queue_retry_redelivers_a_failed_entry(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.script.append("noroute")
    qid = await gw.put(message("<r@x>"))
    await gw.wait(qid, State.FAILED)
    entry = await gw.spool.requeue(qid)  # the operator fixed the alias; `mailgw queue retry`
    assert entry.state == State.RECEIVED
    gw.worker.kick()
    done = await gw.wait(qid, State.DELIVERED)
    assert done.rcpt_status["sales@example.com"]["result"] == "posted"  # type: ignore[index]


async def test_one_sender_at_a_time_in_arrival_order(gw: Harness, odoo_standin: OdooStandin) -> None:
    odoo_standin.latency = 0.03
    ids = []
    for i in range(6):
        for sender in ("ann@example.org", "bob@example.org"):
            ids.append(await gw.put(message(f"<{sender[:3]}{i}@x>", frm=sender), mail_from=sender))
    for qid in ids:
        await gw.wait(qid, State.DELIVERED)
    calls = odoo_standin.posted()
    for sender in ("ann", "bob"):
        mine = [c for c in calls if c.message_id and c.message_id.startswith(f"<{sender}")]
        assert [c.message_id for c in mine] == [f"<{sender}{i}@x>" for i in range(6)]
        for prev, nxt in itertools.pairwise(mine):
            assert nxt.started >= prev.at  # never two of one sender at once


async def test_bounce_goes_to_handler_or_to_odoo(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    handled: list[tuple[str, list[str]]] = []

    async def handler(entry: SpoolEntry, raw: bytes, decisions: Sequence[RouteDecision]) -> None:
        handled.append((entry.queue_id, [d.recipient for d in decisions]))

    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path)], bounce_handler=handler).start()
    qid = await h.put(message("<bh@x>", to="bounce@example.com"), mail_from="", rcpts=["bounce@example.com"])
    entry = await h.wait(qid, State.DELIVERED)
    assert handled == [(qid, ["bounce@example.com"])] and not odoo_standin.message_calls()
    assert entry.rcpt_status["bounce@example.com"]["state"] == "bounce_handled"  # type: ignore[index]
    h.worker.bounce_handler = None
    qid = await h.put(message("<bo@x>", to="bounce@example.com"), mail_from="", rcpts=["bounce@example.com"])
    await h.wait(qid, State.DELIVERED)
    [call] = odoo_standin.message_calls()
    assert call.outcome == "false"  # Odoo recognised its bounce address from Delivered-To
    await h.close()


async def test_stop_releases_what_is_unfinished(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path, timeout="30s")]).start()
    odoo_standin.set_behaviour("hang")
    ids = [await h.put(message(f"<s{i}@x>", frm=f"u{i}@example.org"), mail_from=f"u{i}@example.org")
           for i in range(3)]
    for _ in range(200):
        if odoo_standin.in_flight:
            break
        await asyncio.sleep(0.01)
    await h.worker.stop(timeout=0.2)
    for qid in ids:
        entry = await h.spool.get(qid)
        assert entry is not None and entry.claimed_by is None and entry.state == State.RECEIVED
    odoo_standin.release_hangs()
    await h.close()


async def test_reply_to_mail_the_gateway_relayed_lands_on_its_record(gw: Harness, odoo_standin: OdooStandin) -> None:
    # Odoo sent this through the gateway (outbound spool); its mail.message is gone on the Odoo side.
    sent = (b"From: notifications@example.com\r\nTo: ann@example.org\r\nSubject: Your order\r\n"
            b"Message-Id: <relayed-1-openerp-42-crm.lead@odoo>\r\nX-Odoo-Objects: crm.lead-42\r\n\r\nhi\r\n")
    await gw.spool.put(Envelope(mail_from="bounce@example.com", rcpt_tos=("ann@example.org",), intake="submission"),
                       sent, direction=Direction.OUTBOUND, message_id="<relayed-1-openerp-42-crm.lead@odoo>")
    reply = message("<reply-r1@example.org>", to="ann-replies@example.com",
                    extra="In-Reply-To: <relayed-1-openerp-42-crm.lead@odoo>\r\n")
    qid = await gw.put(reply, rcpts=["ann-replies@example.com"])
    entry = await gw.wait(qid, State.DELIVERED)
    assert entry.route[0]["route"] == "reply" and entry.route[0]["rule"] == "reply.relayed"
    call = odoo_standin.posted()[-1]
    # Odoo's own chain finds nothing (unknown id, no alias): the record the gateway knows is the fallback.
    assert call.args[0] == "crm.lead" and call.kwargs == {"thread_id": 42}


async def test_unreadable_secret_defers_and_never_bounces(odoo_standin: OdooStandin, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    inst = {**odoo_instance_config(odoo_standin, tmp_path), "password_file": str(tmp_path / "missing.secret")}
    h = await Harness(tmp_path, [inst]).start()
    try:
        qid = await h.put(message("<nosecret@x>"))
        entry = await h.wait(qid, State.DEFERRED)
        assert (entry.last_error or "").startswith("451 4.3.0")  # no directory could be read: wait, retry
        captured = capsys.readouterr()
        assert "cannot read secret file" in captured.out + captured.err  # the operator is told why
        assert odoo_standin.message_calls() == []
        assert [e for e in await h.spool.list() if e.direction == Direction.OUTBOUND] == []  # no DSN
    finally:
        await h.close()


async def test_mail_arriving_during_an_outage_is_spooled_deferred_until_the_instance_is_back(tmp_path: Path) -> None:
    """With every instance of its recipients down (breaker open), SMTP mail is spooled `deferred` — parked until
    the breaker closes (retry_max at the latest) instead of being claimed and deferred again once per message or
    per probe; it is delivered once the instance is back. Recipients of an instance that is up are not held."""
    import smtplib

    from gateway.config import ListenerConfig
    from gateway.intake.smtp import SmtpListener

    with OdooStandin() as a, OdooStandin(domain="example.net") as b:
        h = await Harness(tmp_path, [odoo_instance_config(a, tmp_path, name="a"),
                                     odoo_instance_config(b, tmp_path, name="b", domains=["example.net"])],
                          breaker_threshold=1, breaker_cooldown="3s", retry_initial="5s", retry_max="10s").start()
        b.down()
        first = await h.put(message("<first@x>", to="sales@example.net"), rcpts=["sales@example.net"])
        await h.wait(first, State.DEFERRED)
        assert h.clients["b"].breaker.state == "open"
        hold = h.worker.intake_hold("bob@example.org", ("sales@example.net", "support@example.net"))
        assert hold is not None and "circuit open" in hold.reason
        assert hold.until >= time.time() + 9  # parked for retry_max (10 s), not until the probe (3 s)
        assert h.worker.intake_hold("bob@example.org", ("sales@example.com",)) is None  # instance a is up
        # a can take its share:
        assert h.worker.intake_hold("bob@example.org", ("sales@example.com", "sales@example.net")) is None
        assert h.worker.intake_hold("bob@example.org", ("someone@example.org",)) is None  # no instance of ours
        # ann's first message is waiting for b: her later mail waits behind it, whatever its recipients.
        behind = h.worker.intake_hold("Ann@example.org", ("sales@example.com",))
        assert behind is not None and first in behind.reason and behind.until > time.time()

        listener = SmtpListener(ListenerConfig.model_validate({"kind": "smtp", "bind": "127.0.0.1:0"}),
                                spool=h.spool, rcpt_check=lambda *_: None, hostname="mx.test",
                                hold_check=h.worker.intake_hold)
        await listener.start()
        try:
            def send() -> None:
                with smtplib.SMTP("127.0.0.1", listener.port, timeout=10) as c:
                    c.sendmail("bob@example.org", ["sales@example.net"], message("<during@x>", frm="bob@example.org",
                                                                                 to="sales@example.net"))
            await asyncio.to_thread(send)
        finally:
            await listener.drain(1.0)
        [during] = [e for e in await h.spool.list() if e.message_id == "<during@x>"]
        assert during.state == State.DEFERRED and during.attempts == 0
        assert during.next_attempt_at > h.clients["b"].breaker.retry_at + 5  # parked, not due at the probe
        assert "circuit open" in (during.last_error or "")
        assert during.queue_id in h.worker.outage.waiting["b"]  # woken with the others when b is back
        b.up()
        await h.wait(during.queue_id, State.DELIVERED, timeout=20)
        await h.wait(first, State.DELIVERED, timeout=20)
        assert sorted(c.message_id for c in b.message_calls()) == ["<during@x>", "<first@x>"]
        await h.close()
