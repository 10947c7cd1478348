"""DKIM key records: parsing, key sizes, flags — pure (the keys are generated in memory)."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dns_checks.dkim import DkimRecordError, parse_dkim_record, selector_name


def _rsa_p(bits: int) -> str:
    if bits < 1024:  # cryptography will not generate these; a public modulus of the right size will do
        pub = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 0x2B).public_key()
    else:
        pub = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def p2048() -> str:
    return _rsa_p(2048)


def test_rsa_key(p2048: str) -> None:
    key = parse_dkim_record(f"v=DKIM1; h=sha256; k=rsa; p={p2048}")
    assert (key.key_type, key.bits, key.testing) == ("rsa", 2048, False)
    assert isinstance(key.public, tuple) and key.public[1] == 65537


def test_defaults_and_whitespace_inside_p(p2048: str) -> None:
    spaced = " ".join(p2048[i:i + 60] for i in range(0, len(p2048), 60))
    key = parse_dkim_record(f"p={spaced}; t=y:s")
    assert key.key_type == "rsa" and key.testing


@pytest.mark.parametrize("bits", [512, 768, 1024])
def test_short_rsa_keys_are_measured(bits: int) -> None:
    assert parse_dkim_record(f"v=DKIM1; p={_rsa_p(bits)}").bits == bits


def test_ed25519_key() -> None:
    raw = bytes(range(32))
    key = parse_dkim_record(f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}")
    assert (key.key_type, key.bits, key.public) == ("ed25519", 256, raw)


@pytest.mark.parametrize("record, words", [
    ("v=DKIM1; k=rsa; p=", "revoked"),
    ("v=DKIM1; k=rsa", "no p="),
    ("k=rsa; v=DKIM1; p=AAAA", "come first"),
    ("v=DKIM1; h=sha1; p=AAAA", "sha256"),
    ("v=DKIM1; s=tlsrpt; p=AAAA", "email"),
    ("v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
    ("v=DKIM1; k=ed25519; p=AAAA", "32"),
    ("v=DKIM1; p=!!!notbase64", "base64"),
    ("v=DKIM1; p=AAAA", "not an RSA public key"),
    ("just text", "tag=value"),
])
def test_unusable_records(record: str, words: str) -> None:
    with pytest.raises(DkimRecordError, match=words):
        parse_dkim_record(record)


def test_selector_name() -> None:
    assert selector_name("sel1", "Example.COM.") == "sel1._domainkey.example.com"
