"""DKIM (RFC 6376, RSA and RFC 8463 Ed25519): every signature of a message, verified with dkimpy.

dkimpy's verifier takes a `dnsfunc(name) -> TXT` hook. Its asyncio variant needs aiodns (c-ares and the
system's resolver), so instead the keys every signature names are fetched first, concurrently, through the
gateway's own async resolver, and dkimpy then verifies with a `dnsfunc` that reads them from that table.
A key lookup that failed (timeout, SERVFAIL) is a temperror, never a "fail". The hashing and the
signature checks are CPU work: for large messages they run in a worker thread, so the event loop never
waits for them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from dns_checks.resolver import Answer, DnsLookup, normalize
from gateway.headers import header_fields, header_section, unfold

MAX_SIGNATURES = 10  # a message with more gets the first ten verified: bounded work for hostile input
THREAD_ABOVE = 256 * 1024  # messages larger than this are hashed in a worker thread
_WS = re.compile(rb"\s+")


@dataclass(frozen=True, slots=True)
class DkimVerdict:
    result: str  # pass fail neutral policy permerror temperror
    domain: str  # d=
    selector: str  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    header_b: str = ""  # the first 8 characters of b= (RFC 6008), to tell signatures apart
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "domain": self.domain, "selector": self.selector,
                "algorithm": self.algorithm, "identity": self.identity, "header_b": self.header_b,
                "reason": self.reason}


def parsed_headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields as dkimpy sees them (so that signature number N here is dkimpy's N); a header dkimpy
    cannot read gives the fields our own reader finds, and verification then reports why."""
    head = header_section(raw)
    try:
        return [(bytes(n), bytes(v)) for n, v in dkim.rfc822_parse(head)[0]]
    except Exception:
        return [(n, d.split(b":", 1)[1] if b":" in d else b"") for n, d in header_fields(head)]


def signature_tags(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[dict[bytes, bytes] | str]:
    """The tag lists of every `name` header field (DKIM-Signature, ARC-Seal, ...), in order; a string (the
    problem) for a field that cannot be read."""
    out: list[dict[bytes, bytes] | str] = []
    lname = name.lower()
    for fname, value in headers:
        if fname.lower() != lname:
            continue
        try:
            out.append(parse_tag_value(unfold(value).strip()))
        except InvalidTagValueList as exc:
            out.append(f"unreadable tag list: {exc}")
    return out


def key_name(tags: Mapping[bytes, bytes]) -> str | None:
    """``selector._domainkey.domain`` for a signature's s= and d=, or None when they are unusable."""
    d, s = tags.get(b"d", b"").decode("ascii", "replace"), tags.get(b"s", b"").decode("ascii", "replace")
    name = normalize(f"{s}._domainkey.{d}")
    if not d or not s or any(c.isspace() for c in name) or len(name) > 253:
        return None
    return name


async def fetch_keys(dns: DnsLookup, names: Iterable[str]) -> dict[str, Answer]:
    """TXT answers of the key records, looked up concurrently (one query per distinct name)."""
    wanted = list(dict.fromkeys(names))
    answers = await asyncio.gather(*(dns.query(n, "TXT") for n in wanted))
    return dict(zip(wanted, answers, strict=True))


def key_lookup(keys: Mapping[str, Answer]) -> Callable[..., bytes | None]:
    """dkimpy's `dnsfunc`, answered from the prefetched keys: the first TXT that holds a p= tag."""
    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        ans = keys.get(normalize(text))
        if ans is None or not ans.is_ok:
            return None
        texts = ans.texts()
        found = next((t for t in texts if "p=" in t), texts[0] if texts else None)
        return found.encode("utf-8", "replace") if found is not None else None
    return dnsfunc


def key_problem(ans: Answer | None) -> tuple[str, str] | None:
    """(result, reason) when a key lookup already decides the signature: temperror or permerror."""
    if ans is None:
        return "permerror", "no key record name"
    if ans.is_error:
        return "temperror", f"key lookup failed: {ans.describe()}"
    if ans.is_void or not ans.texts():
        return "permerror", f"no key for signature ({ans.name})"
    return None


def _text(tags: Mapping[bytes, bytes], tag: bytes) -> str:
    return tags.get(tag, b"").decode("ascii", "replace")


def _verify_all(raw: bytes, sigs: Sequence[dict[bytes, bytes] | str], keys: Mapping[str, Answer]
                ) -> list[DkimVerdict]:
    """The CPU part: dkimpy parses the message once and checks each signature against the prefetched keys."""
    verifier: dkim.DKIM | None = None
    dnsfunc = key_lookup(keys)
    out: list[DkimVerdict] = []
    for idx, tags in enumerate(sigs):
        if isinstance(tags, str):
            out.append(DkimVerdict("permerror", "", "", reason=tags))
            continue
        base = {"domain": normalize(_text(tags, b"d")), "selector": _text(tags, b"s"),
                "algorithm": _text(tags, b"a").lower(), "identity": _text(tags, b"i"),
                "header_b": _WS.sub(b"", tags.get(b"b", b""))[:8].decode("ascii", "replace")}
        if base["algorithm"] == "rsa-sha1":
            out.append(DkimVerdict("policy", reason="rsa-sha1 signatures are not accepted (RFC 8301)", **base))
            continue
        name = key_name(tags)
        problem = key_problem(keys.get(name) if name else None)
        if problem is None and name is not None:
            try:  # dkimpy reports a broken key record as a failed signature: it is a permerror
                dkim.evaluate_pk(name.encode(), dnsfunc(name))
            except Exception as exc:
                problem = "permerror", f"unusable key record: {exc}"
        if problem is not None:
            out.append(DkimVerdict(problem[0], reason=problem[1], **base))
            continue
        if verifier is None:
            try:
                verifier = dkim.DKIM(raw, minkey=1024)
            except Exception as exc:  # dkimpy cannot read the header section at all
                out.append(DkimVerdict("permerror", reason=f"message format: {exc}", **base))
                continue
        result, reason = _verify_one(verifier, idx, dnsfunc)
        out.append(DkimVerdict(result, reason=reason, **base))
    return out


def _verify_one(verifier: dkim.DKIM, idx: int, dnsfunc: Callable[..., bytes | None]) -> tuple[str, str]:
    try:
        verifier.verify_headerprep(idx)  # tags, expiry, i=/d= agreement: a signature we cannot use
    except dkim.DKIMException as exc:
        return "permerror", str(exc) or type(exc).__name__
    try:
        ok = verifier.verify(idx, dnsfunc=dnsfunc)
    except dkim.ValidationError as exc:  # the body hash did not match
        return "fail", str(exc).split(" (got", 1)[0]
    except dkim.KeyFormatError as exc:
        return "permerror", f"unusable key: {exc}"
    except Exception as exc:  # hostile input must give a verdict, never an exception
        return "permerror", f"cannot verify: {exc}"
    return ("pass", "") if ok else ("fail", "signature did not verify")


async def verify_dkim(raw: bytes, dns: DnsLookup) -> list[DkimVerdict]:
    """One verdict per DKIM-Signature (the first MAX_SIGNATURES), in header order; [] when unsigned."""
    sigs = signature_tags(parsed_headers(raw), b"DKIM-Signature")[:MAX_SIGNATURES]
    if not sigs:
        return []
    names = [n for t in sigs if not isinstance(t, str) and (n := key_name(t))]
    keys = await fetch_keys(dns, names)
    if len(raw) > THREAD_ABOVE:
        return await asyncio.to_thread(_verify_all, raw, sigs, keys)
    return _verify_all(raw, sigs, keys)

