"""The inbound worker's failure paths (issue 18, defects 7 and 10): every exception ends in `failed` with a
reason under delivery.lifetime, and an Odoo outage costs each queued message a bounded number of spool
writes, however many breaker periods it lasts. Real SQLite spool, stand-in Odoo over HTTP."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from gateway.bounces import BounceForwarder
from gateway.spool import SpoolEntry, SqliteSpool, State
from routing.decision import RouteDecision
from tests.integration.test_odoo_inbound import Harness, message
from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.waiting import wait_until

# A delivery report that names no recipient anywhere, neither in a delivery-status part nor in its text.
UNREADABLE_BOUNCE = (
    b"From: MAILER-DAEMON@mx.elsewhere.test\r\nTo: bounce@example.com\r\nSubject: Undelivered Mail\r\n"
    b"Message-Id: <unreadable-dsn@mx.elsewhere.test>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nSomething went wrong.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.elsewhere.test\r\n\r\n"
    b"--b--\r\n")


async def test_7_unparseable_bounce_is_a_dead_letter_not_a_crash_loop(odoo_standin: OdooStandin,
                                                                       tmp_path: Path) -> None:
    h = Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path)])
    h.bounce_handler = None
    await h.start()
    h.worker.bounce_handler = BounceForwarder(spool=h.spool, clients=h.clients, directory=lambda: h.sync.current,
                                              hostname="gw.test", verp_secret=None)
    try:
        with capture_logs() as events:
            qid = await h.put(UNREADABLE_BOUNCE, mail_from="", rcpts=["bounce@example.com"])
            entry = await h.wait(qid, State.FAILED)
        assert "unparseable bounce" in (entry.last_error or "")
        assert entry.rcpt_status["bounce@example.com"]["state"] == "failed"  # type: ignore[index]
        assert not [e for e in events if e["event"] == "delivery.crashed"]
        assert await h.outbound() == []  # no DSN for a bounce
        assert odoo_standin.message_calls() == []
    finally:
        await h.close()


async def test_7_a_crash_is_retried_and_then_fails_with_its_reason_at_the_lifetime(odoo_standin: OdooStandin,
                                                                                   tmp_path: Path) -> None:
    async def buggy(entry: SpoolEntry, raw: bytes, decisions: Sequence[RouteDecision]) -> None:
        raise KeyError("a bug in the bounce handler")

    h = await Harness(tmp_path, [odoo_instance_config(odoo_standin, tmp_path)], bounce_handler=buggy,
                      lifetime="0.5s").start()
    try:
        qid = await h.put(message("<crash@x>", to="bounce@example.com"), mail_from="ann@example.org",
                          rcpts=["bounce@example.com"])
        entry = await h.wait(qid, State.FAILED)
        assert entry.attempts >= 2  # retried first: a bug fixed by an upgrade lets it through
        assert "internal error" in (entry.last_error or "") and "a bug in the bounce handler" in entry.last_error
    finally:
        await h.close()


class SpoolWrites:
    """Counts the spool writes that touch each entry: claims, transitions, deferrals, wake-ups, releases."""

    def __init__(self, spool: SqliteSpool):
        self.per_entry: Counter[str] = Counter()
        self.claims = 0
        for name in ("claim", "transition", "defer_many", "wake", "release"):
            setattr(spool, name, self._counting(name, getattr(spool, name)))

    def _counting(self, name: str, method: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            if name == "claim":
                ids = [e.queue_id for e in result]
                self.claims += len(ids)
            elif name in ("transition", "release"):
                ids = [args[0]]
            elif name == "defer_many":
                ids = list(result)
            else:  # wake: every id asked for (it returns a count)
                ids = list(args[0])
            self.per_entry.update(ids)
            return result

        return wrapper


async def test_10_an_outage_costs_bounded_spool_writes_however_many_breaker_periods(tmp_path: Path) -> None:
    with OdooStandin() as odoo:
        h = await Harness(tmp_path, [odoo_instance_config(odoo, tmp_path, timeout="2s")], breaker_threshold=2,
                          breaker_cooldown="0.05s", retry_initial="0.05s", retry_max="1h").start()
        try:
            writes = SpoolWrites(h.spool)
            breaker = h.clients["main"].breaker
            opened: list[str] = []
            breaker.subscribe(lambda state: opened.append(state) if state == "open" else None)
            odoo.down()
            senders = [f"s{i}@example.org" for i in range(5)]
            ids = [await h.put(message(f"<o{i}@x>", frm=senders[i % 5]), mail_from=senders[i % 5])
                   for i in range(100)]
            for qid in ids:
                await h.wait(qid, State.DEFERRED)
            await wait_until(lambda: len(opened) >= 5, "five failed probes")
            early = dict(writes.per_entry)
            claims = writes.claims
            await wait_until(lambda: len(opened) >= 40, "forty failed probes", timeout=30)
            # Nothing was claimed while the breaker stayed open, and no entry was written again.
            assert writes.claims == claims and dict(writes.per_entry) == early
            assert max(writes.per_entry[q] for q in ids) <= 4, writes.per_entry.most_common(3)

            odoo.up()
            for qid in ids:
                await h.wait(qid, State.DELIVERED, timeout=30)
            calls = odoo.message_calls()
            assert sorted(c.message_id or "" for c in calls) == sorted(f"<o{i}@x>" for i in range(100))
            # The whole outage, recovery included: a handful of writes per message, not one per probe.
            assert max(writes.per_entry[q] for q in ids) <= 7, writes.per_entry.most_common(3)
        finally:
            await h.close()


async def test_10_mail_arriving_during_an_outage_waits_for_the_breaker(tmp_path: Path) -> None:
    """Spooled deferred at intake (docs/odoo.md §4) until the breaker closes, not until each probe."""
    with OdooStandin() as odoo:
        h = await Harness(tmp_path, [odoo_instance_config(odoo, tmp_path)], breaker_threshold=1,
                          breaker_cooldown="0.05s", retry_max="1h").start()
        try:
            odoo.down()
            first = await h.put(message("<first@x>"))
            await h.wait(first, State.DEFERRED)
            hold = h.worker.intake_hold("bob@example.org", ("sales@example.com",))
            assert hold is not None and hold.until > time.time() + 60  # parked until the breaker closes
            writes = SpoolWrites(h.spool)
            opened: list[str] = []
            h.clients["main"].breaker.subscribe(lambda s: opened.append(s) if s == "open" else None)
            await wait_until(lambda: len(opened) >= 10, "ten failed probes")
            assert writes.claims == 0
            odoo.up()
            await h.wait(first, State.DELIVERED, timeout=20)
        finally:
            await h.close()
