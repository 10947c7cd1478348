"""DKIM signing of outbound mail (dkimpy), chosen by the From domain, and the keys it signs with.

A domain may have two keys, an RSA one (RFC 6376) and an Ed25519 one (RFC 8463): the message then carries
both signatures, RSA on top (receivers that cannot verify Ed25519 yet use it, the others may use either).
`generate_key` writes a key file as `mailgw dkim keygen` does and returns the DNS record to publish.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
# relaxed body canonicalization survives the whitespace changes some relays make (trailing spaces, blank lines)
CANONICALIZATION = (b"relaxed", b"relaxed")
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


class _OpenSslKey(dict[str, Any]):
    """dkimpy's parsed RSA key (a dict, so dkimpy's own code keeps working with it) plus OpenSSL's."""

    openssl: Any = None


_parsed: dict[bytes, Any] = {}
_pure_parse: Callable[[bytes], Any] = dkim.parse_pem_private_key
_pure_sign: Callable[[Any, Any], bytes] = dkim.RSASSA_PKCS1_v1_5_sign


def _parse_key(data: bytes) -> Any:
    """Parsed once per key (dkimpy re-parses the PEM for every message), with OpenSSL's key attached when it
    signs exactly as dkimpy does: PKCS#1 v1.5 is deterministic, so both must give the same bytes."""
    key = _parsed.get(data)
    if key is not None:
        return key
    key = _OpenSslKey(_pure_parse(data))
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        openssl = serialization.load_pem_private_key(data, password=None)
        if not isinstance(openssl, rsa.RSAPrivateKey):
            raise TypeError(f"not an RSA key: {type(openssl).__name__}")
        probe = hashlib.sha256(b"mailgw dkim self-check")
        fast = openssl.sign(probe.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        if fast == bytes(_pure_sign(probe, key)):
            key.openssl = openssl
        else:
            log.warning("dkim.openssl_mismatch", hint="signing with dkimpy's pure-Python RSA")
    except Exception as exc:  # cryptography missing or a key it reads differently: the slow path still works
        log.warning("dkim.openssl_unavailable", error=repr(exc))
    if len(_parsed) < 64:
        _parsed[data] = key
    return key


def _sign_digest(hasher: Any, key: Any) -> bytes:
    openssl = getattr(key, "openssl", None)
    if openssl is None or len(hasher.digest()) != 32:
        return bytes(_pure_sign(hasher, key))
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    return bytes(openssl.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))


def use_openssl_for_rsa() -> None:
    """dkimpy computes RSA signatures in pure Python: ~8 ms per 2048-bit signature, on the event loop (119
    messages/s with RSA against 1,069 with Ed25519, bench/outbound.py). OpenSSL (through `cryptography`) gives
    the same signature in well under a millisecond. dkimpy looks both steps up as module globals of `dkim`;
    they are replaced by the two functions above, which fall back to dkimpy's own when anything differs."""
    dkim.parse_pem_private_key = _parse_key
    dkim.RSASSA_PKCS1_v1_5_sign = _sign_digest


class DkimSigner:
    """Signs with the keys whose domain equals the From domain, or whose domain the From domain is under."""

    def __init__(self, keys: Sequence[DkimKey]):
        if any(k.algorithm.startswith("rsa") for k in keys):
            use_openssl_for_rsa()
        self.keys: dict[str, list[DkimKey]] = {}
        for k in keys:
            self.keys.setdefault(k.domain.lower(), []).append(k)
        for domain_keys in self.keys.values():  # Ed25519 signed first, so the RSA signature ends on top
            domain_keys.sort(key=lambda k: k.algorithm.startswith("rsa"))

    @classmethod
    def from_config(cls, configs: Sequence[DkimConfig]) -> DkimSigner:
        return cls([DkimKey(c.domain.lower(), c.selector, c.key_file.read_bytes(), c.algorithm) for c in configs])

    def keys_for(self, domain: str | None) -> list[DkimKey]:
        while domain:
            if domain in self.keys:
                return self.keys[domain]
            domain = domain.partition(".")[2]
        return []

    def sign(self, raw: bytes) -> bytes:
        """The message with a DKIM-Signature per key prepended, or unchanged when no key applies."""
        head = _head(raw)
        keys = self.keys_for(from_domain(head))
        if not keys:
            return raw
        present = {h.split(b":", 1)[0].strip().lower() for h in head.split(b"\r\n")
                   if b":" in h and not h[:1].isspace()}
        headers = [h for h in SIGNED_HEADERS if h in present or h == b"from"]
        signatures = b""
        # One parse of the message for every key: dkimpy's `dkim.sign` splits the whole message into lines each
        # time (~8 ms of a 500 KB message), and signing leaves the parsed message as it was.
        message: dkim.DKIM | None = None
        for key in keys:
            try:
                if message is None:
                    message = dkim.DKIM(raw, linesep=b"\r\n")
                sig = message.sign(key.selector.encode(), key.domain.encode(), key.private_key,
                                   include_headers=headers, signature_algorithm=key.algorithm.encode(),
                                   canonicalize=CANONICALIZATION)
            except Exception as exc:  # a broken key must not stop mail; it goes without this signature, loudly
                log.error("dkim.sign_failed", domain=key.domain, selector=key.selector, error=str(exc))
                continue
            signatures = sig + signatures
        return signatures + raw


# -- keys -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeneratedKey:
    private: bytes  # the key file's content (PEM for RSA, dkimpy's base64 seed for Ed25519)
    record: str  # the TXT record's value, v=DKIM1; k=…; p=…


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> GeneratedKey:
    """A new signing key and its DNS record value. RSA keys are PKCS#1 PEM (what OpenDKIM and dkimpy read);
    Ed25519 keys are the base64 32-byte seed dkimpy signs with (`dknewkey --ktype ed25519` writes the same)."""
    if algorithm == "ed25519":
        import nacl.signing

        signing = nacl.signing.SigningKey.generate()
        public = base64.b64encode(bytes(signing.verify_key)).decode()
        return GeneratedKey(base64.b64encode(bytes(signing)) + b"\n", f"v=DKIM1; k=ed25519; p={public}")
    if algorithm != "rsa":
        raise ValueError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
    if bits < 1024:
        raise ValueError("RSA keys shorter than 1024 bits are refused by receivers (RFC 8301); use 2048")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return GeneratedKey(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}")


def write_key_file(path: Path, content: bytes, *, force: bool = False) -> None:
    """Created with mode 0600 from the start (never readable by others, not even for a moment)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content)
    finally:
        os.close(fd)


def zone_line(selector: str, domain: str, record: str) -> str:
    """The record in master-file syntax, split into quoted strings of at most 255 octets (RFC 1035 §3.3.14)."""
    parts = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    return f"{selector}._domainkey.{domain.rstrip('.')}. IN TXT ( {parts} )"
