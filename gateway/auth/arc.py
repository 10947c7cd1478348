"""ARC (RFC 8617): validate the chain, and find the hop whose recorded results the gateway may believe.

A mailing list or Microsoft 365 that forwards mail changes it (subject tag, footer) and sends it from its own
servers: the author's DKIM breaks and SPF names the forwarder, so DMARC fails although the author was
authenticated when the forwarder received it. ARC lets the forwarder record what it saw
(ARC-Authentication-Results) and seal it. The gateway believes such a record only from sealers the operator
trusts (`auth.trusted_arc_sealers`), only when the whole chain validates, and only along an unbroken run of
trusted sealers starting at the hop that handed the message on: an untrusted later hop could have replaced
the content of an older, genuine set (only the newest ARC-Message-Signature covers the message as it is).
The earliest hop of that run — the first trusted hop — is the one whose results count.

Validation is dkimpy's `ARC.verify`, fed, like DKIM, with keys prefetched through the gateway's resolver.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dkim

from dns_checks.resolver import DnsLookup, normalize
from gateway.auth.dkim import THREAD_ABOVE, fetch_keys, key_lookup, key_name, parsed_headers, signature_tags
from gateway.auth.results import ResInfo, parse_results
from gateway.headers import unfold

MAX_INSTANCES = 50  # RFC 8617 §4.2.1
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ArcVerdict:
    result: str  # none pass fail
    reason: str = ""
    instances: int = 0
    sealers: tuple[str, ...] = ()  # the ARC-Seal d= of instance 1 … N
    trusted_hop: int = 0  # the instance whose ARC-Authentication-Results the gateway believes (0: none)
    trusted_results: tuple[ResInfo, ...] = ()  # what that hop recorded
    temporary: bool = False  # a key could not be looked up: the chain was not judged

    @property
    def trusted_sealer(self) -> str:
        return self.sealers[self.trusted_hop - 1] if self.trusted_hop else ""

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "reason": self.reason, "instances": self.instances,
                "sealers": list(self.sealers), "trusted_hop": self.trusted_hop or None,
                "trusted_sealer": self.trusted_sealer or None,
                "trusted_results": [f"{r.method}={r.result}" + "".join(f" {k}={v}" for k, v in r.props)
                                    for r in self.trusted_results]}


def is_trusted(domain: str, trusted: Iterable[str]) -> bool:
    """A sealer is trusted when its d= is a configured name or below one."""
    d = normalize(domain)
    return any(d == t or d.endswith("." + t) for t in (normalize(x) for x in trusted) if t)


def _instance(value: bytes) -> int | None:
    m = _INSTANCE.search(unfold(value))
    return int(m.group(1)) if m else None


def _run_arc(raw: bytes, dnsfunc: Any) -> tuple[Any, list[dict[Any, Any]], str]:
    try:
        return dkim.ARC(raw, minkey=1024).verify(dnsfunc=dnsfunc)
    except Exception as exc:  # hostile input gives a verdict, never an exception
        return dkim.CV_Fail, [], f"cannot verify: {exc}"


async def verify_arc(raw: bytes, dns: DnsLookup, trusted: Sequence[str] = ()) -> ArcVerdict:
    headers = parsed_headers(raw)
    arc = [(n.lower(), v) for n, v in headers
           if n.lower() in (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")]
    if not arc:
        return ArcVerdict("none", "no ARC headers")
    numbers = [i for _n, v in arc if (i := _instance(v)) is not None]
    top = max(numbers, default=0)
    if top < 1 or top > MAX_INSTANCES:
        return ArcVerdict("fail", f"invalid ARC instance numbers (highest i={top})", instances=top)
    tags = [t for name in (b"ARC-Seal", b"ARC-Message-Signature") for t in signature_tags(headers, name)]
    names = [n for t in tags if not isinstance(t, str) and (n := key_name(t))]
    keys = await fetch_keys(dns, names)
    failed = next((a for a in keys.values() if a.is_error), None)
    if failed is not None:
        # Temporary only when a trusted sealer is involved: a sender whose own DNS does not answer must not
        # turn a failed authentication into a temporary one.
        seals = [normalize(t.get(b"d", b"").decode("ascii", "replace")) for t in signature_tags(headers, b"ARC-Seal")
                 if not isinstance(t, str)]
        return ArcVerdict("fail", f"key lookup failed: {failed.describe()}", instances=top,
                          temporary=any(is_trusted(d, trusted) for d in seals))
    dnsfunc = key_lookup(keys)
    if len(raw) > THREAD_ABOVE:
        cv, data, why = await asyncio.to_thread(_run_arc, raw, dnsfunc)
    else:
        cv, data, why = _run_arc(raw, dnsfunc)
    by_instance = {int(d["instance"]): d for d in data if "instance" in d}
    sealers = tuple(normalize(bytes(by_instance.get(i, {}).get("as-domain", b"")).decode("ascii", "replace"))
                    for i in range(1, top + 1))
    if cv != dkim.CV_Pass:
        return ArcVerdict("fail", why or "chain did not validate", top, sealers)
    aars = {_instance(v): v for n, v in arc if n == b"arc-authentication-results"}
    hop = 0
    results: tuple[ResInfo, ...] = ()
    for i in range(top, 0, -1):
        if not is_trusted(sealers[i - 1], trusted):
            break
        hop = i
        results = parse_results(unfold(aars.get(i, b"")).decode("utf-8", "replace")).results
        # Look past this hop only when it says it validated the chain it received.
        if not any(r.method == "arc" and r.result == "pass" for r in results):
            break
    reason = f"chain of {top} validated"
    if hop:
        reason += f"; trusted sealer {sealers[hop - 1]} (i={hop})"
    return ArcVerdict("pass", reason, top, sealers, hop, results)
