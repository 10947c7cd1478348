"""An in-process authoritative DNS server on loopback for tests (dnslib for the wire format).

    with DnsTestServer(ZONE_TEXT, servfail={"broken.example.test"}, drop={("slow.example.test", "TXT")}) as srv:
        host, port = srv.address          # UDP and TCP on the same port
        ...
        srv.load(OTHER_ZONE)              # swap the data while running

- Zone text is standard master-file syntax (``$ORIGIN``, ``$TTL``, parenthesised multi-line records), parsed
  by dnslib's ``RR.fromZone``; several zones may be given at once.
- Exact-name matching (case-insensitive); CNAMEs are followed inside the data; NXDOMAIN for unknown names
  (NOERROR/no data for a known name with other types, and for empty non-terminals such as
  ``_domainkey.example.test``); the enclosing SOA goes in the authority section of negative answers.
- ``servfail`` / ``drop``: names (every type) or ``(name, "TYPE")`` pairs answered with SERVFAIL or not
  answered at all (a timeout for the client). Both are plain sets and can be changed while running.
- UDP replies larger than 512 bytes (or the client's EDNS size) are truncated (TC), so clients retry
  over TCP as they would with a real server.
- ``queries`` records ``(protocol, name, type)`` for every request, for tests that count lookups.

`mail_zone(...)` writes the zone text of a typical mail domain, `txt(...)` quotes a long TXT value.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSLabel, DNSRecord

NameSpec = str | tuple[str, str]


def txt(value: str) -> str:
    """A TXT value in master-file syntax, split into quoted strings of at most 255 octets."""
    escaped = [value[i:i + 255].replace("\\", "\\\\").replace('"', '\\"') for i in range(0, len(value), 255)]
    return " ".join(f'"{part}"' for part in escaped or [""])


def mail_zone(domain: str, *, mx: Sequence[str] = (), spf: str | Sequence[str] | None = None,
              dmarc: str | None = None, dkim: Mapping[str, str] | None = None, extra: Iterable[str] = (),
              ns_address: str = "127.0.0.1") -> str:
    """Zone text for a mail domain: SOA, NS (+glue), MX (``["10 mx.example.test."]``), SPF, DMARC, DKIM selectors
    (``{"sel1": "v=DKIM1; k=rsa; p=..."}``) and `extra` lines (relative to the domain, e.g. ``"mx A 192.0.2.1"``)."""
    lines = [f"$ORIGIN {domain.rstrip('.')}.", "$TTL 300",
             "@ IN SOA ns1 hostmaster 1 3600 600 86400 300", "@ IN NS ns1", f"ns1 IN A {ns_address}"]
    lines += [f"@ IN MX {m}" for m in mx]
    for record in [spf] if isinstance(spf, str) else spf or ():
        lines.append(f"@ IN TXT {txt(record)}")
    if dmarc is not None:
        lines.append(f"_dmarc IN TXT {txt(dmarc)}")
    for selector, record in (dkim or {}).items():
        lines.append(f"{selector}._domainkey IN TXT {txt(record)}")
    lines += list(extra)
    return "\n".join(lines) + "\n"


def _label(name: str) -> DNSLabel:
    return DNSLabel(name.rstrip(".") + ".")


class DnsTestServer:
    def __init__(self, *zones: str, servfail: Iterable[NameSpec] = (), drop: Iterable[NameSpec] = (),
                 host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.requested_port = port  # 0: any free port (a fixed one, e.g. 53, only inside a network namespace)
        self.servfail: set[NameSpec] = set(servfail)
        self.drop: set[NameSpec] = set(drop)
        self.queries: list[tuple[str, str, str]] = []
        self._rrs: list[RR] = []
        self._lock = threading.Lock()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.port = 0
        self.load(*zones)

    # -- data ------------------------------------------------------------------------------------------

    def load(self, *zones: str) -> None:
        """Replace the served data with these zones."""
        rrs = [rr for text in zones for rr in RR.fromZone(text)]
        with self._lock:
            self._rrs = rrs

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def nameserver(self) -> str:
        """``HOST:PORT`` as `mailgw dns-check --nameserver` takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _matches(self, specs: set[NameSpec], qname: DNSLabel, qtype: str) -> bool:
        for spec in list(specs):
            name, rtype = (spec, None) if isinstance(spec, str) else spec
            if _label(name) == qname and (rtype is None or rtype.upper() == qtype):
                return True
        return False

    def answer(self, request: DNSRecord, proto: str = "udp") -> DNSRecord | None:
        """The reply for one request, or None to stay silent."""
        q = request.q
        qtype = QTYPE.get(q.qtype)
        self.queries.append((proto, str(q.qname).rstrip(".").lower(), str(qtype)))
        if self._matches(self.drop, q.qname, str(qtype)):
            return None
        reply = request.reply()
        reply.header.ra = 0
        if self._matches(self.servfail, q.qname, str(qtype)):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        with self._lock:
            rrs = self._rrs
        name = q.qname
        for _hop in range(8):  # follow CNAMEs inside our data, like an authoritative server does
            here = [rr for rr in rrs if rr.rname == name]
            cname = [rr for rr in here if rr.rtype == QTYPE.CNAME]
            if cname and q.qtype != QTYPE.CNAME:
                reply.add_answer(cname[0])
                name = cname[0].rdata.label
                continue
            for rr in here:
                if rr.rtype == q.qtype or q.qtype == QTYPE.ANY:
                    reply.add_answer(rr)
            break
        if not any(rr.rname == name for rr in reply.rr if rr.rtype != QTYPE.CNAME):
            if not any(_is_at_or_under(rr.rname, name) for rr in rrs):
                reply.header.rcode = RCODE.NXDOMAIN
            soa = [rr for rr in rrs if rr.rtype == QTYPE.SOA and _is_at_or_under(name, rr.rname)]
            if soa:
                reply.add_auth(max(soa, key=lambda rr: len(rr.rname.label)))
        reply.header.aa = 1
        return reply

    # -- sockets ---------------------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # Port 0 gives UDP and TCP different ports: take UDP's and bind TCP to the same number (retry
        # with a new UDP port in the rare case that TCP one is taken).
        for _attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, self.requested_port))
            port = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            break
        else:
            raise OSError("no port free for both UDP and TCP")
        tcp.listen(16)
        udp.settimeout(0.2)
        tcp.settimeout(0.2)
        self._udp, self._tcp, self.port = udp, tcp, port
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, name=f"dnstest-{port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self.address

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=2)
        for s in (self._udp, self._tcp):
            if s is not None:
                s.close()

    def __enter__(self) -> DnsTestServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _reply_bytes(self, data: bytes, proto: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None  # not DNS: ignore, as servers do
        reply = self.answer(request, proto)
        if reply is None:
            return None
        packed = reply.pack()
        if proto == "udp":
            limit = 512
            for rr in request.ar:
                if rr.rtype == QTYPE.OPT:
                    limit = max(512, rr.rclass)  # the OPT record's class is the client's UDP size
            if len(packed) > limit:
                # dnslib's truncate() drops the question too, and clients discard such replies.
                short = request.reply()
                short.header.tc = 1
                short.header.aa = reply.header.aa
                packed = short.pack()
        return packed

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stopping.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            out = self._reply_bytes(data, "udp")
            if out is not None:
                with contextlib.suppress(OSError):
                    self._udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._tcp.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
            t.start()

    def _serve_conn(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        with conn:
            while not self._stopping.is_set():
                try:
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    body = _recv_exact(conn, int.from_bytes(head, "big"))
                except OSError:
                    return
                if body is None:
                    return
                out = self._reply_bytes(body, "tcp")
                if out is None:
                    continue  # silent: the client times out
                try:
                    conn.sendall(len(out).to_bytes(2, "big") + out)
                except OSError:
                    return


def _is_at_or_under(name: DNSLabel, parent: DNSLabel) -> bool:
    """`name` equals `parent` or is below it (an existing descendant makes an empty non-terminal)."""
    n = [label.lower() for label in name.label]
    p = [label.lower() for label in parent.label]
    if len(n) < len(p):
        return False
    return n[len(n) - len(p):] == p


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@contextlib.contextmanager
def serve_zone(*zones: str, servfail: Iterable[NameSpec] = (), drop: Iterable[NameSpec] = (),
               host: str = "127.0.0.1") -> Iterator[DnsTestServer]:
    """Context manager form: ``with serve_zone(text) as srv: srv.address``."""
    srv = DnsTestServer(*zones, servfail=servfail, drop=drop, host=host)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
