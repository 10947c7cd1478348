"""The loopback DNS server helper itself (others reuse it): answers, errors, truncation and TCP."""

from __future__ import annotations

import socket

import dns.asyncresolver
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from dns_checks import DnsClient
from tests.integration.dnsserver import DnsTestServer, mail_zone, serve_zone

LONG = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(120)) + " -all"  # ~1.8 kB: needs TCP
ZONE = mail_zone("example.test", mx=["10 mx.example.test."], spf=LONG,
                 extra=["mx A 127.0.0.2", "mx AAAA ::1", "www CNAME mx", "a.b.deep TXT \"x\""])


async def test_answers_and_negative_answers() -> None:
    with serve_zone(ZONE) as srv:
        c = DnsClient.create([srv.address], lifetime=2.0)
        mx = await c.query("EXAMPLE.test", "MX")
        assert [str(r.exchange) for r in mx.rdatas] == ["mx.example.test."]
        www = await c.query("www.example.test", "A")
        assert www.addresses() == ["127.0.0.2"] and www.canonical == "mx.example.test"
        assert (await c.query("nope.example.test", "A")).outcome == "nxdomain"
        assert (await c.query("mx.example.test", "TXT")).outcome == "nodata"
        assert (await c.query("b.deep.example.test", "TXT")).outcome == "nodata"  # empty non-terminal
        assert (await c.query("example.test", "SOA")).is_ok


async def test_servfail_drop_and_reload() -> None:
    with serve_zone(ZONE, servfail={"example.test"}, drop={("mx.example.test", "A")}) as srv:
        c = DnsClient.create([srv.address], lifetime=0.3)
        assert (await c.query("example.test", "MX")).outcome == "servfail"
        assert (await c.query("mx.example.test", "A")).outcome == "timeout"
        assert (await c.query("mx.example.test", "AAAA")).addresses() == ["::1"]
        srv.servfail.clear()
        srv.load(mail_zone("example.test", mx=["20 other.example.test."]))
        mx = await DnsClient.create([srv.address], lifetime=2.0).query("example.test", "MX")
        assert [str(r.exchange) for r in mx.rdatas] == ["other.example.test."]


def test_large_answers_are_truncated_over_udp_and_complete_over_tcp() -> None:
    with serve_zone(ZONE) as srv:
        q = dns.message.make_query("example.test", "TXT")  # no EDNS: 512-byte limit
        udp = dns.query.udp(q, srv.host, port=srv.port, timeout=2)
        assert udp.flags & dns.flags.TC and not udp.answer
        tcp = dns.query.tcp(q, srv.host, port=srv.port, timeout=2)
        assert b"".join(tcp.answer[0][0].strings).decode() == LONG
        assert ("tcp", "example.test", "TXT") in srv.queries


async def test_resolver_without_edns_falls_back_to_tcp() -> None:
    with serve_zone(ZONE) as srv:
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers, r.port, r.lifetime, r.cache = [srv.host], srv.port, 2.0, None
        ans = await r.resolve("example.test", "TXT")
        assert b"".join(ans[0].strings).decode() == LONG


async def test_ipv6_loopback() -> None:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with DnsTestServer(ZONE, host="::1") as srv:
        assert srv.nameserver.startswith("[::1]:")
        ans = await DnsClient.create([srv.address], lifetime=2.0).query("mx.example.test", "A")
        assert ans.addresses() == ["127.0.0.2"]
