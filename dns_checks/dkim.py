"""The DKIM check: the selector's key record (RFC 6376 §3.6.1, RFC 8463) and whether it matches the key
the gateway signs with. Tag parsing and RSA key decoding are dkimpy's, so we read keys as verifiers do.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path

from dkim.crypto import UnparsableKeyError, parse_pem_private_key, parse_public_key
from dkim.util import InvalidTagValueList, parse_tag_value

from dns_checks.resolver import DnsLookup, normalize
from dns_checks.result import CheckResult, Problem, Status
from gateway.config import DkimConfig

RSA_FAIL_BITS = 1024  # RFC 8301: verifiers must not accept shorter keys
RSA_WARN_BITS = 2048  # what Gmail and M3AAWG recommend; 1024-bit keys are factorable by well-funded attackers


class DkimRecordError(ValueError):
    """The TXT record is not a usable DKIM key: signatures with this selector fail."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    key_type: str  # "rsa" | "ed25519"
    bits: int
    public: tuple[int, int] | bytes  # RSA (modulus, exponent); ed25519 the raw 32 bytes
    testing: bool  # t=y
    hashes: tuple[str, ...]  # h=, empty: any


def parse_dkim_record(text: str) -> DkimKey:
    try:
        tags = {k.decode().lower(): v.decode() for k, v in parse_tag_value(text.encode()).items()}
    except (InvalidTagValueList, UnicodeError) as exc:
        raise DkimRecordError(f"not a tag=value list ({exc})") from None
    if "v" in tags and (tags["v"] != "DKIM1" or not text.lstrip().startswith("v")):
        raise DkimRecordError("v= must be DKIM1 and come first")
    if "p" not in tags:
        raise DkimRecordError("no p= (public key) tag")
    p = re.sub(r"\s+", "", tags["p"])
    if not p:
        raise DkimRecordError("p= is empty: the key is revoked")
    service = [s.strip() for s in tags.get("s", "*").split(":")]
    if "*" not in service and "email" not in service:
        raise DkimRecordError(f"s={tags['s']} does not allow email")
    hashes = tuple(h.strip().lower() for h in tags["h"].split(":")) if "h" in tags else ()
    if hashes and "sha256" not in hashes:
        raise DkimRecordError(f"h={tags['h']} does not allow sha256 (sha1 is obsolete, RFC 8301)")
    flags = [f.strip().lower() for f in tags.get("t", "").split(":")]
    key_type = tags.get("k", "rsa").lower()
    try:
        raw = base64.b64decode(p, validate=True)
    except binascii.Error:
        raise DkimRecordError("p= is not valid base64") from None
    if key_type == "rsa":
        try:
            pk = parse_public_key(raw)
        except (UnparsableKeyError, IndexError, TypeError) as exc:
            raise DkimRecordError(f"p= is not an RSA public key ({exc})") from None
        return DkimKey("rsa", int(pk["modulus"]).bit_length(), (pk["modulus"], pk["publicExponent"]),
                       "y" in flags, hashes)
    if key_type == "ed25519":
        if len(raw) != 32:
            raise DkimRecordError(f"p= is {len(raw)} bytes, an ed25519 key is 32")
        return DkimKey("ed25519", 256, raw, "y" in flags, hashes)
    raise DkimRecordError(f"unknown key type k={key_type}")


def public_key_of(key_file: Path, algorithm: str) -> tuple[int, int] | bytes:
    """The public half of the gateway's signing key, in `DkimKey.public` form.

    RSA: a PEM (PKCS#1 or PKCS#8) file, decoded by dkimpy. ed25519: dkimpy's format, the base64 32-byte
    seed (what `dknewkey --ktype ed25519` writes); the public key is derived with PyNaCl.
    Raises OSError (unreadable), ValueError (unparsable) or ImportError (no PyNaCl).
    """
    data = key_file.read_bytes().replace(b"\r\n", b"\n")
    if algorithm.startswith("ed25519"):
        import nacl.signing  # dkimpy needs it to sign with ed25519 anyway

        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except binascii.Error:
            raise ValueError("not dkimpy's base64 ed25519 key format") from None
        if len(seed) != 32:
            raise ValueError(f"ed25519 key is {len(seed)} bytes, expected 32")
        return bytes(nacl.signing.SigningKey(seed).verify_key)
    try:
        pk = parse_pem_private_key(data)
    except (UnparsableKeyError, IndexError, TypeError) as exc:
        raise ValueError(f"not a PEM RSA private key ({exc})") from None
    return pk["modulus"], pk["publicExponent"]


def selector_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{normalize(domain)}"


async def check_dkim(dns: DnsLookup, domain: str, selector: str, signing: DkimConfig | None = None) -> CheckResult:
    """One selector: the record, its key, and (with `signing`) that it is the gateway's key."""
    name = selector_name(selector, domain)
    ans = await dns.query(name, "TXT")
    texts = ans.texts()
    records = tuple(f"{name}: {t}" for t in texts)
    if ans.is_error:
        return CheckResult("dkim", Status.UNKNOWN, f"selector {selector}: {ans.describe()}", records)
    if not texts:
        used = "the gateway signs with it, so every signature fails" if signing else "signatures fail"
        return CheckResult("dkim", Status.FAIL, f"selector {selector}: no key record at {name} ({used})")
    if len(texts) > 1:
        return CheckResult("dkim", Status.FAIL, f"selector {selector}: {len(texts)} TXT records at {name}; "
                           "verifiers pick one at random (keep exactly one)", records)
    try:
        key = parse_dkim_record(texts[0])
    except DkimRecordError as exc:
        return CheckResult("dkim", Status.FAIL, f"selector {selector}: {exc}", records)
    problems = _key_problems(key)
    if signing is not None:
        problems.append(_match_problem(key, signing))
    desc = f"{key.key_type} {key.bits}-bit" if key.key_type == "rsa" else "ed25519"
    return CheckResult.from_problems("dkim", [Problem(p.status, f"selector {selector}: {p.text}")
                                              for p in problems],
                                     f"selector {selector}: {desc} key published", records)


def _key_problems(key: DkimKey) -> list[Problem]:
    problems = []
    if key.key_type == "rsa" and key.bits < RSA_FAIL_BITS:
        problems.append(Problem(Status.FAIL, f"RSA key is {key.bits} bits: receivers ignore keys under "
                                f"{RSA_FAIL_BITS} bits (RFC 8301), signatures fail"))
    elif key.key_type == "rsa" and key.bits < RSA_WARN_BITS:
        problems.append(Problem(Status.WARN, f"RSA key is {key.bits} bits: use {RSA_WARN_BITS} "
                                "(shorter keys are considered breakable)"))
    if key.key_type == "ed25519":
        problems.append(Problem(Status.OK, "ed25519 (RFC 8463): also sign with RSA, many receivers cannot "
                                "verify ed25519 yet"))
    if key.testing:
        problems.append(Problem(Status.WARN, "t=y (testing): receivers may treat signed mail as unsigned; "
                                "remove the flag once signing works"))
    return problems


def _match_problem(key: DkimKey, signing: DkimConfig) -> Problem:
    want_type = "ed25519" if signing.algorithm.startswith("ed25519") else "rsa"
    if key.key_type != want_type:
        return Problem(Status.FAIL, f"DNS has a {key.key_type} key but the gateway signs with "
                       f"{signing.algorithm}: every signature fails")
    try:
        public = public_key_of(signing.key_file, signing.algorithm)
    except OSError as exc:
        return Problem(Status.WARN, f"cannot read the signing key {signing.key_file}: {exc.strerror or exc}")
    except ImportError:
        return Problem(Status.WARN, "cannot compare with the ed25519 signing key: PyNaCl is not installed")
    except ValueError as exc:
        return Problem(Status.FAIL, f"the signing key {signing.key_file} is unusable: {exc}")
    if public != key.public:
        return Problem(Status.FAIL, f"the key in DNS is not the public half of {signing.key_file}: "
                       "every signature the gateway makes fails (publish the matching key)")
    return Problem(Status.OK, f"matches the signing key {signing.key_file}")
