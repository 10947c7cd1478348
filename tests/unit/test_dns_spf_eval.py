"""check_host() and the SPF tree analysis against in-memory DNS data (no sockets)."""

from __future__ import annotations

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from dns_checks.resolver import Answer, normalize
from dns_checks.result import Status
from dns_checks.spf import analyze_spf, check_spf
from dns_checks.spf_eval import check_host


class ZoneDns:
    """A `DnsLookup` over master-file text with absolute names; names in `errors` answer that outcome."""

    def __init__(self, text: str, errors: dict[str, str] | None = None):
        self.zone = dns.zone.from_text(text, origin=dns.name.root, relativize=False, check_origin=False)
        self.errors = errors or {}
        self.queries: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> Answer:
        key = normalize(name)
        self.queries.append((key, rdtype))
        if key in self.errors:
            return Answer(key, rdtype, self.errors[key])  # type: ignore[arg-type]
        node = self.zone.get_node(dns.name.from_text(key))
        if node is None:
            under = any(str(n).rstrip(".").endswith("." + key) for n in self.zone.nodes)
            return Answer(key, rdtype, "nodata" if under else "nxdomain")
        rds = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype))
        if rds is None:
            return Answer(key, rdtype, "nodata")
        return Answer(key, rdtype, "ok", tuple(rds))


ZONE = """
example.com.        300 IN TXT "v=spf1 include:_spf.example.com mx a:web.example.com -all"
example.com.        300 IN MX 10 mx.example.com.
mx.example.com.     300 IN A 192.0.2.25
web.example.com.    300 IN A 192.0.2.80
_spf.example.com.   300 IN TXT "v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 ~all"
soft.example.com.   300 IN TXT "v=spf1 ip4:192.0.2.1 ~all"
redir.example.com.  300 IN TXT "v=spf1 redirect=_spf.example.com"
redirnone.example.com. 300 IN TXT "v=spf1 redirect=nothing.example.com"
exists.example.com. 300 IN TXT "v=spf1 exists:%{ir}.allow.example.com -all"
1.2.0.192.allow.example.com. 300 IN A 127.0.0.2
ptr.example.com.    300 IN TXT "v=spf1 ptr -all"
1.2.0.192.in-addr.arpa. 300 IN PTR host.ptr.example.com.
host.ptr.example.com. 300 IN A 192.0.2.1
two.example.com.    300 IN TXT "v=spf1 -all"
two.example.com.    300 IN TXT "v=spf1 +all"
other.example.com.  300 IN TXT "not spf"
inclbroken.example.com. 300 IN TXT "v=spf1 include:nospf.example.com -all"
nospf.example.com.  300 IN A 192.0.2.9
void.example.com.   300 IN TXT "v=spf1 a:n1.example.com a:n2.example.com a:n3.example.com ip4:192.0.2.1 -all"
slowinc.example.com. 300 IN TXT "v=spf1 include:slow.example.com -all"
plus.example.com.   300 IN TXT "v=spf1 mx +all"
loop.example.com.   300 IN TXT "v=spf1 include:loop2.example.com -all"
loop2.example.com.  300 IN TXT "v=spf1 include:loop.example.com -all"
"""
# many.example.com includes i0 … i10: 11 lookups, one over the limit (two strings: each is ≤ 255 octets).
ZONE += ('many.example.com. 300 IN TXT "v=spf1 ' + " ".join(f"include:i{i}.example.com" for i in range(6))
         + '" " ' + " ".join(f"include:i{i}.example.com" for i in range(6, 11)) + ' -all"\n')
ZONE += "".join(f'i{i}.example.com. 300 IN TXT "v=spf1 ip4:203.0.113.{i} -all"\n' for i in range(11))


@pytest.fixture
def zone() -> ZoneDns:
    return ZoneDns(ZONE, {"slow.example.com": "timeout"})


@pytest.mark.parametrize("ip, domain, result", [
    ("198.51.100.7", "example.com", "pass"),  # via include
    ("2001:db8::1", "example.com", "pass"),
    ("192.0.2.25", "example.com", "pass"),  # mx
    ("192.0.2.80", "example.com", "pass"),  # a:web
    ("203.0.113.1", "example.com", "fail"),
    ("::ffff:192.0.2.25", "example.com", "pass"),  # IPv4-mapped is evaluated as IPv4
    ("203.0.113.1", "soft.example.com", "softfail"),
    ("198.51.100.7", "redir.example.com", "pass"),
    ("203.0.113.1", "redir.example.com", "softfail"),
    ("203.0.113.1", "redirnone.example.com", "permerror"),
    ("192.0.2.1", "exists.example.com", "pass"),
    ("192.0.2.2", "exists.example.com", "fail"),
    ("192.0.2.1", "ptr.example.com", "pass"),
    ("192.0.2.2", "ptr.example.com", "fail"),
    ("192.0.2.1", "two.example.com", "permerror"),
    ("192.0.2.1", "other.example.com", "none"),
    ("192.0.2.1", "absent.example.com", "none"),
    ("192.0.2.1", "inclbroken.example.com", "permerror"),
    ("192.0.2.1", "void.example.com", "permerror"),  # the third void lookup comes before ip4
    ("192.0.2.1", "slowinc.example.com", "temperror"),
    ("203.0.113.9", "many.example.com", "pass"),  # i9 is the 10th include: still within the limit
    ("192.0.2.99", "many.example.com", "permerror"),  # an 11th lookup
    ("192.0.2.1", "loop.example.com", "permerror"),
])
async def test_check_host(zone: ZoneDns, ip: str, domain: str, result: str) -> None:
    out = await check_host(zone, ip, domain)
    assert out.result == result, out.reason


async def test_check_host_reports_what_matched(zone: ZoneDns) -> None:
    out = await check_host(zone, "198.51.100.7", "example.com", "bounce@example.com")
    assert out.matched == "ip4:198.51.100.0/24 in _spf.example.com"
    assert out.lookups == 1
    assert out.records == ["example.com: v=spf1 include:_spf.example.com mx a:web.example.com -all",
                           "_spf.example.com: v=spf1 ip4:198.51.100.0/24 ip6:2001:db8::/32 ~all"]


async def test_analysis_counts_the_whole_tree(zone: ZoneDns) -> None:
    a = await analyze_spf(zone, "example.com")
    assert (a.lookups, a.voids) == (3, 0)
    assert a.final_all is not None and a.final_all.text == "-all"
    many = await analyze_spf(zone, "many.example.com")
    assert many.lookups == 11
    redir = await analyze_spf(zone, "redir.example.com")
    assert redir.lookups == 1 and redir.final_all is not None and redir.final_all.text == "~all"


@pytest.mark.parametrize("domain, status, words", [
    ("example.com", Status.OK, "one valid record, 3/10 lookups, ends in -all"),
    ("many.example.com", Status.FAIL, "11 DNS-lookup terms (limit 10)"),
    ("void.example.com", Status.FAIL, "3 void lookups (limit 2)"),
    ("two.example.com", Status.FAIL, "2 SPF records"),
    ("plus.example.com", Status.FAIL, "'+all' authorises every host"),
    ("inclbroken.example.com", Status.FAIL, "include:nospf.example.com (from inclbroken.example.com) has no SPF"),
    ("loop.example.com", Status.FAIL, "SPF loop"),
    ("absent.example.com", Status.WARN, "no SPF record at absent.example.com"),
    ("slowinc.example.com", Status.UNKNOWN, "cannot read SPF: slow.example.com TXT: DNS timeout"),
    ("ptr.example.com", Status.WARN, "ptr mechanism is deprecated"),
])
async def test_check_spf_record_health(zone: ZoneDns, domain: str, status: Status, words: str) -> None:
    res = await check_spf(zone, domain)
    assert res.status is status, res.finding
    assert words in res.finding


async def test_check_spf_ip_for_bounce_and_from_roles(zone: ZoneDns) -> None:
    ok = await check_spf(zone, "example.com", ip="198.51.100.7")
    assert ok.status is Status.OK and "198.51.100.7 is authorised for example.com" in ok.finding
    bad = await check_spf(zone, "example.com", ip="203.0.113.1", role="bounce", check="spf-bounce")
    assert (bad.check, bad.status) == ("spf-bounce", Status.FAIL)
    assert "not authorised for example.com as bounce domain (SPF fail)" in bad.finding
    soft = await check_spf(zone, "soft.example.com", ip="203.0.113.1")
    assert soft.status is Status.WARN and "softfail" in soft.finding
    from_only = await check_spf(zone, "example.com", ip="203.0.113.1", role="from",
                                from_domain="bounce.example.net")
    assert from_only.status is Status.WARN and "bounce.example.net" in from_only.finding
