"""MTA-STS (RFC 8461) and TLS-RPT (RFC 8460) counters, with a policy host served over HTTPS on loopback
(trustme certificates), MX hosts with STARTTLS, and the loopback DNS server."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import trustme

from gateway.cli import main as mailgw
from gateway.config import parse_config
from gateway.outbound.tlsrpt import build_reports, day_of, load_day
from gateway.outbound.worker import OutboundWorker
from gateway.spool import Direction, Envelope, SqliteSpool, State
from tests.integration.dnsserver import DnsTestServer, mail_zone
from tests.integration.fakemx import FakeMx, fake_mx

CA = trustme.CA()


def policy_text(mode: str, *mx: str, max_age: int = 86400) -> str:
    return "\r\n".join(["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]) + "\r\n"


@asynccontextmanager
async def policy_host(policy: str, host: str = "127.0.0.5") -> AsyncIterator[tuple[int, list[str]]]:
    """HTTPS on `host` for mta-sts.sts.test, answering GET /.well-known/mta-sts.txt with `policy`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert("mta-sts.sts.test").configure_cert(ctx)
    requests: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head.decode().split("\r\n")[0])
        body = policy.encode()
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, host, 0, ssl=ctx)
    try:
        yield server.sockets[0].getsockname()[1], requests
    finally:
        server.close()
        await server.wait_closed()


def mx_tls(name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    CA.issue_cert(name).configure_cert(ctx)
    return ctx


@contextmanager
def sts_dns(policy_id: str = "20261201") -> Iterator[DnsTestServer]:
    with DnsTestServer(mail_zone("sts.test", mx=["10 mx.sts.test."], extra=[
            "mx A 127.0.0.2", "mta-sts A 127.0.0.5", f'_mta-sts TXT "v=STSv1; id={policy_id}"',
            '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@sts.test"'])) as dns:
        yield dns


@asynccontextmanager
async def gateway(tmp_path: Path, mx: FakeMx, dns: DnsTestServer, https_port: int, **outbound: Any
                  ) -> AsyncIterator[tuple[OutboundWorker, SqliteSpool]]:
    (tmp_path / "ca.pem").write_bytes(CA.cert_pem.bytes())
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"),
        "outbound": {"smtp_port": mx.port, "nameservers": [dns.nameserver], "retry_initial": "0.1s",
                     "retry_max": "0.2s", "helo_name": "gw.example.com",
                     "mta_sts": {"https_port": https_port, "ca_file": str(tmp_path / "ca.pem")}, **outbound},
    })
    (tmp_path / "state").mkdir(exist_ok=True)
    spool = await SqliteSpool.open(tmp_path / "spool.db")
    worker = OutboundWorker(cfg, spool, hostname="gw.example.com")
    try:
        yield worker, spool
    finally:
        await worker.sender.close()
        await spool.close()


async def attempt(worker: OutboundWorker, spool: SqliteSpool, qid: str) -> Any:
    await spool.wake([qid])
    [entry] = await spool.claim(Direction.OUTBOUND, "t", limit=1, now=time.time() + 1)
    return await worker.process(entry)


async def put(spool: SqliteSpool, rcpt: str = "ann@sts.test") -> str:
    env = Envelope(mail_from="someone@example.org", rcpt_tos=(rcpt,), intake="submission")
    qid, _ = await spool.put(env, b"From: someone@example.org\r\nSubject: hi\r\n\r\nhi\r\n",
                             direction=Direction.OUTBOUND)
    return qid


def counters(tmp_path: Path) -> dict[str, Any]:
    return load_day(tmp_path / "state" / "tls-reports", day_of(time.time()))


async def test_enforce_delivers_only_with_verified_tls_to_a_matching_mx(tmp_path: Path) -> None:
    async with policy_host(policy_text("enforce", "mx.sts.test")) as (https_port, requests), \
            fake_mx("127.0.0.2", tls=mx_tls("mx.sts.test"), hostname="mx.sts.test") as mx:
        with sts_dns() as dns:
            async with gateway(tmp_path, mx, dns, https_port) as (worker, spool):
                entry = await attempt(worker, spool, await put(spool))
                assert entry.state == State.SENT and len(mx.messages) == 1
                # the policy is cached with its id: a second message does not fetch it again
                entry = await attempt(worker, spool, await put(spool, "bob@sts.test"))
                assert entry.state == State.SENT and requests == ["GET /.well-known/mta-sts.txt HTTP/1.0"]
    cache = json.loads((tmp_path / "state" / "mta-sts.json").read_text())
    assert cache["sts.test"]["mode"] == "enforce" and cache["sts.test"]["policy_id"] == "20261201"
    # TLS-RPT counts sessions: the second message went on the same (reused) TLS session
    [entry_counts] = counters(tmp_path).values()
    assert (entry_counts["type"], entry_counts["success"], entry_counts["failure"]) == ("sts", 1, 0)
    assert mx.connections == 1


async def test_enforce_with_a_non_matching_mx_defers_then_fails_with_the_reason(tmp_path: Path) -> None:
    async with policy_host(policy_text("enforce", "mx.elsewhere.test")) as (https_port, _), \
            fake_mx("127.0.0.2", tls=mx_tls("mx.sts.test")) as mx:
        with sts_dns() as dns:
            async with gateway(tmp_path, mx, dns, https_port, lifetime="1s") as (worker, spool):
                qid = await put(spool)
                entry = await attempt(worker, spool, qid)
                assert entry.state == State.OUTGOING
                assert "4.7.5 MTA-STS policy of sts.test (enforce) allows none of its MX hosts" in (
                    entry.last_error or "")
                await asyncio.sleep(1.1)
                entry = await attempt(worker, spool, qid)
                assert entry.state == State.EXCEPTION
                st = (entry.rcpt_status or {})["ann@sts.test"]
                assert st["status"] == "5.4.7" and "MTA-STS policy of sts.test (enforce)" in st["text"]
                assert mx.connections == 0  # never even connected
    [entry_counts] = counters(tmp_path).values()
    assert entry_counts["failure"] == 2 and "validation-failure" in next(iter(entry_counts["details"]))


async def test_enforce_with_a_certificate_for_another_name_is_not_delivered(tmp_path: Path) -> None:
    async with policy_host(policy_text("enforce", "*.sts.test")) as (https_port, _), \
            fake_mx("127.0.0.2", tls=mx_tls("wrong.example.net")) as mx:
        with sts_dns() as dns:
            async with gateway(tmp_path, mx, dns, https_port) as (worker, spool):
                entry = await attempt(worker, spool, await put(spool))
                assert entry.state == State.OUTGOING and mx.messages == []
                assert "4.7.5" in (entry.last_error or "") and "STARTTLS failed" in (entry.last_error or "")
    details = next(iter(counters(tmp_path).values()))["details"]
    assert any(k.startswith("certificate-host-mismatch|mx.sts.test|127.0.0.2") for k in details), details


async def test_testing_mode_delivers_and_reports(tmp_path: Path, capsys: Any) -> None:
    async with policy_host(policy_text("testing", "mx.elsewhere.test")) as (https_port, _), \
            fake_mx("127.0.0.2", tls=mx_tls("wrong.example.net")) as mx:
        with sts_dns() as dns:
            async with gateway(tmp_path, mx, dns, https_port, tls_reports={"contact": "mailto:pm@example.com"}
                               ) as (worker, spool):
                entry = await attempt(worker, spool, await put(spool))
                assert entry.state == State.SENT and len(mx.messages) == 1  # testing: report only
    day = day_of(time.time())
    [report] = build_reports(counters(tmp_path), day, organization="gw.example.com", contact="mailto:pm@example.com")
    [policy] = report["policies"]
    assert policy["policy"]["policy-type"] == "sts" and "mode: testing" in policy["policy"]["policy-string"]
    assert policy["summary"]["total-failure-session-count"] >= 1
    assert {d["result-type"] for d in policy["failure-details"]} == {"validation-failure"}
    # the CLI prints the same reports from the files the daemon keeps
    (tmp_path / "config.yaml").write_text(f"state_dir: {tmp_path / 'state'}\n")
    capsys.readouterr()
    assert mailgw(["tls-report", "-c", str(tmp_path / "config.yaml"), "--date", day]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["report-id"] == f"{day}T00:00:00Z_sts.test" and printed[0]["policies"][0]["summary"]


async def test_no_policy_is_opportunistic_tls(tmp_path: Path) -> None:
    async with fake_mx("127.0.0.2", tls=mx_tls("whatever.invalid")) as mx:
        with DnsTestServer(mail_zone("sts.test", mx=["10 mx.sts.test."], extra=["mx A 127.0.0.2"])) as dns:
            async with gateway(tmp_path, mx, dns, 9) as (worker, spool):
                entry = await attempt(worker, spool, await put(spool))
                assert entry.state == State.SENT
    [entry_counts] = counters(tmp_path).values()
    assert (entry_counts["type"], entry_counts["success"]) == ("no-policy-found", 1)
