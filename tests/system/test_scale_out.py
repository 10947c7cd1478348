"""Several `mailgw serve` on one PostgreSQL spool (docs/scale-out.md), as real processes under SMTP load from
several clients, delivering to a stand-in Odoo that takes a while per message:

- kill -9 one gateway: every message either acknowledged reaches Odoo, none is posted twice (a redelivery is
  dropped by Odoo as a duplicate Message-Id), and the survivor finishes what the dead one had claimed once its
  leases run out, while the dead one stays down;
- PostgreSQL restarted under load: no acknowledged message is lost, nothing is refused with 5xx (451 while the
  database is away), and the intake recovers by itself.
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.odoo_standin import OdooStandin, odoo_instance_config
from tests.pgcluster import PgCluster, cluster_fixture
from tests.system.daemon import DaemonProcess, base_config
from tests.waiting import wait_until_sync

LEASE = "3s"


class Load:
    """SMTP clients in threads, each sending one message per connection to its gateway until stopped."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.codes: Counter[int] = Counter()  # replies other than 250 after DATA (or at RCPT)
        self.errors = 0  # connection refused/reset: the gateway was down
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self, ports: Callable[[], list[int]], clients: int) -> None:
        for i in range(clients):
            t = threading.Thread(target=self._send, args=(ports, i), daemon=True)
            t.start()
            self.threads.append(t)

    def _send(self, ports: Callable[[], list[int]], index: int) -> None:
        n = 0
        while not self.stop.is_set():
            live = ports()
            port = live[(index + n) % len(live)]
            mid = f"<c{index}-{n}@load.test>"
            sender = f"client{index}-{n % 3}@load.example"  # a few lanes per client: per-sender order is kept
            n += 1
            raw = (f"From: {sender}\r\nTo: sales@example.com\r\nMessage-Id: {mid}\r\nSubject: load {n}\r\n\r\n"
                   f"{'x' * 1500}\r\n").encode()
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
                    client.sendmail(sender, ["sales@example.com"], raw)
                with self._lock:
                    self.acked.append(mid)
            except smtplib.SMTPResponseException as exc:
                with self._lock:
                    self.codes[exc.smtp_code] += 1
                time.sleep(0.05)
            except smtplib.SMTPRecipientsRefused as exc:
                with self._lock:
                    for code, _msg in exc.recipients.values():
                        self.codes[code] += 1
                time.sleep(0.05)
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.errors += 1
                time.sleep(0.05)

    def wait_acked(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def finish(self) -> list[str]:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return list(self.acked)


def gateway(tmp: Path, name: str, standin: OdooStandin, dsn: str, schema: str) -> DaemonProcess:
    home = tmp / name
    home.mkdir()
    secret = home / "spool.dsn"
    secret.write_text(dsn)
    cfg = base_config(home, spool={"backend": "postgres", "dsn_file": str(secret), "schema": schema,
                                   "instance": name, "lease": LEASE})
    cfg["odoo"] = [odoo_instance_config(standin, home, timeout="10s", max_concurrency=4)]
    cfg["delivery"] = {"concurrency": 4, "poll_interval": "0.5s", "retry_initial": "0.5s", "retry_max": "2s"}
    return DaemonProcess(home, cfg)


def posted(standin: OdooStandin) -> Counter[str]:
    """Message-Id -> how often Odoo created a message for it (a dropped duplicate is not counted)."""
    return Counter(c.message_id for c in standin.message_calls() if c.outcome.startswith("id:") and c.message_id)


@pytest.fixture
def standin() -> Iterator[OdooStandin]:
    s = OdooStandin()
    s.latency = 0.03  # every call takes a while: claims pile up behind the deliveries in flight
    s.start()
    try:
        yield s
    finally:
        s.stop()


def test_kill9_one_of_two_gateways_loses_and_doubles_nothing(tmp_path: Path, standin: OdooStandin,
                                                             pg_spool: dict[str, str], pg_cluster: PgCluster) -> None:
    gw1 = gateway(tmp_path, "gw1", standin, pg_spool["dsn"], pg_spool["schema"])
    gw2 = gateway(tmp_path, "gw2", standin, pg_spool["dsn"], pg_spool["schema"])
    load = Load()
    try:
        gw1.start()
        gw2.start()
        alive = [gw1.smtp_port, gw2.smtp_port]
        load.start(lambda: alive, clients=8)
        load.wait_acked(250, 60)

        def claimed_by_gw1() -> int:
            out = pg_cluster.psql(f"SELECT count(*) FROM {pg_spool['schema']}.entries WHERE claim_instance = 'gw1' "
                                  "AND claim_token IS NOT NULL", "mailgw_test")
            return int(out or 0)

        wait_until_sync(lambda: claimed_by_gw1() > 0, "gw1 to hold claims", 30, details=gw1.log_text, interval=0.2)
        gw1.kill9()  # mid-load, with claims in flight
        alive.remove(gw1.smtp_port)
        held = claimed_by_gw1()
        load.wait_acked(len(load.acked) + 50, 30)  # gw2 keeps taking mail
        acked = load.finish()
        assert len(acked) >= 250 and held > 0

        def all_delivered() -> bool:
            got = posted(standin)
            return all(got[m] for m in acked)

        wait_until_sync(all_delivered, "every acknowledged message in Odoo", 90, details=gw2.log_text, interval=0.2)
        assert gw1.proc is not None and gw1.proc.poll() is not None  # still dead: gw2 did it alone
        got = posted(standin)
        assert not [m for m in acked if got[m] > 1], "a message was posted twice"
        assert claimed_by_gw1() == 0
        events = gw2.events()
        assert any(e.get("event") == "spool.taken_over" for e in events)
        # Everything stored was delivered: the acknowledged messages, and any the dead gateway had committed
        # without its 250 reaching the client (the client sends it again; Odoo drops the duplicate).
        left = pg_cluster.psql(f"SELECT state, count(*) FROM {pg_spool['schema']}.entries GROUP BY state",
                               "mailgw_test").splitlines()
        assert len(left) == 1 and left[0].startswith("delivered|") and int(left[0].split("|")[1]) >= len(acked)
        assert gw2.stop() == 0
    finally:
        load.stop.set()
        for d in (gw1, gw2):
            if d.proc is not None and d.proc.poll() is None:
                d.kill9()


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A server this test restarts, apart from the other tests'."""
    yield from cluster_fixture("restart")


def test_postgres_restart_under_load_loses_nothing_and_intake_recovers(tmp_path: Path, standin: OdooStandin,
                                                                      own_cluster: PgCluster) -> None:
    standin.latency = 0.0
    gw = gateway(tmp_path, "gw", standin, own_cluster.dsn("restart"), "mailgw")
    load = Load()
    try:
        gw.start()
        ports = [gw.smtp_port]
        load.start(lambda: ports, clients=6)
        load.wait_acked(100, 60)
        own_cluster.stop()  # fast shutdown: every session is cut, new ones are refused
        time.sleep(2.0)  # the load keeps coming while the database is away
        during = dict(load.codes)
        own_cluster.start()
        before = len(load.acked)
        load.wait_acked(before + 100, 60)  # the intake recovered by itself
        acked = load.finish()
        assert len(acked) >= before + 100, f"intake did not recover: {len(acked)} acked, replies {load.codes}"
        assert during.get(451, 0) > 0, f"nothing was deferred while the database was away: {during}"
        assert not [c for c in load.codes if c >= 500], f"5xx replies: {load.codes}"
        wait_until_sync(lambda: all(posted(standin)[m] for m in acked), "every acknowledged message in Odoo", 90,
                        details=gw.log_text, interval=0.2)
        assert not [m for m, n in posted(standin).items() if n > 1]
        events = [e.get("event") for e in gw.events()]
        assert "spool.unavailable" in events and "spool.available" in events
        assert gw.stop() == 0
    finally:
        load.stop.set()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill9()


def test_a_gateway_started_before_its_database_waits_for_it(tmp_path: Path, standin: OdooStandin,
                                                            own_cluster: PgCluster) -> None:
    """PostgreSQL not up yet when the gateway starts (both booting): it does not listen (senders try later or
    elsewhere) and says why; once the database answers it starts by itself."""
    own_cluster.stop()
    gw = gateway(tmp_path, "gw", standin, own_cluster.dsn("restart"), "mailgw")
    try:
        starter = threading.Thread(target=gw.start, kwargs={"timeout": 60}, daemon=True)
        starter.start()
        wait_until_sync(lambda: "daemon.spool_unavailable" in gw.log_text(), "the wait to be logged", 30,
                        details=gw.log_text, interval=0.2)
        assert "daemon.ready" not in gw.log_text()
        own_cluster.start()
        starter.join(60)
        assert "daemon.ready" in gw.log_text()
        with smtplib.SMTP("127.0.0.1", gw.smtp_port, timeout=10) as client:
            client.sendmail("a@load.example", ["sales@example.com"], b"Subject: after\r\n\r\nx\r\n")
        assert gw.stop() == 0
    finally:
        if gw.proc is not None and gw.proc.poll() is None:
            gw.kill9()


def test_a_second_live_gateway_with_the_same_instance_name_is_refused(tmp_path: Path, standin: OdooStandin,
                                                                      pg_spool: dict[str, str]) -> None:
    first = gateway(tmp_path, "gw", standin, pg_spool["dsn"], pg_spool["schema"])
    (tmp_path / "copy").mkdir()
    twin = gateway(tmp_path / "copy", "gw", standin, pg_spool["dsn"], pg_spool["schema"])
    try:
        first.start()
        with pytest.raises(RuntimeError, match="exited with 78"):
            twin.start()
        assert "another live gateway on this spool calls itself 'gw'" in twin.log_text()
        assert pg_spool["dsn"].split("@")[0] not in twin.log_text() + first.log_text()  # no password in the logs
        assert first.stop() == 0
    finally:
        for d in (first, twin):
            if d.proc is not None and d.proc.poll() is None:
                d.kill9()
