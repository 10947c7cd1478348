"""DKIM signing of outbound mail (dkimpy), one key per signing domain, chosen by the From domain."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import dkim

from gateway.config import DkimConfig
from gateway.logs import get_logger

log = get_logger("mailgw.dkim")

# What we sign (RFC 6376 §5.4.1 recommendations). Listing From twice over-signs it: a second From added in
# transit breaks the signature instead of being displayed.
SIGNED_HEADERS = (
    b"from", b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"in-reply-to",
    b"references", b"mime-version", b"content-type", b"content-transfer-encoding", b"list-unsubscribe",
    b"list-unsubscribe-post", b"auto-submitted",
)
_FROM_RE = re.compile(rb"^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_ADDR_RE = re.compile(rb"[^\s<>\"(),;:]+@([A-Za-z0-9.-]+)")


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    private_key: bytes
    algorithm: str


def _head(raw: bytes) -> bytes:
    """Up to the first CRLF blank line (all of it without one): `raw.split(b"\\r\\n\\r\\n", 1)[0]` without
    copying the body."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[:end]


def from_domain(raw: bytes) -> str | None:
    m = _FROM_RE.search(_head(raw))
    if not m:
        return None
    addr = _ADDR_RE.search(m.group(1))
    return addr.group(1).decode("ascii", "replace").lower().rstrip(".") if addr else None


class DkimSigner:
    """Signs with the key whose domain equals the From domain, or whose domain the From domain is under."""

    def __init__(self, keys: Sequence[DkimKey]):
        self.keys = {k.domain.lower(): k for k in keys}

    @classmethod
    def from_config(cls, configs: Sequence[DkimConfig]) -> DkimSigner:
        return cls([DkimKey(c.domain.lower(), c.selector, c.key_file.read_bytes(), c.algorithm) for c in configs])

    def key_for(self, domain: str | None) -> DkimKey | None:
        while domain:
            if domain in self.keys:
                return self.keys[domain]
            domain = domain.partition(".")[2]
        return None

    def sign(self, raw: bytes) -> bytes:
        """The message with a DKIM-Signature prepended, or unchanged when no key applies."""
        head = _head(raw)
        key = self.key_for(from_domain(head))
        if key is None:
            return raw
        present = {h.split(b":", 1)[0].strip().lower() for h in head.split(b"\r\n")
                   if b":" in h and not h[:1].isspace()}
        headers = [h for h in SIGNED_HEADERS if h in present or h == b"from"]
        try:
            sig = dkim.sign(raw, key.selector.encode(), key.domain.encode(), key.private_key,
                            include_headers=headers, signature_algorithm=key.algorithm.encode(),
                            linesep=b"\r\n")
        except Exception as exc:  # a broken key must not stop mail; it goes unsigned and we say so loudly
            log.error("dkim.sign_failed", domain=key.domain, selector=key.selector, error=str(exc))
            return raw
        return sig + raw
