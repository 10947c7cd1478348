"""RSA signing keys for DKIM tests: the private key as PEM and the public half as a DNS `p=` value."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def rsa_key(bits: int = 2048, *, pkcs8: bool = False) -> tuple[bytes, str]:
    """(private key PEM — PKCS#8 or traditional "RSA PRIVATE KEY", as operators have both —, base64 SPKI)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    fmt = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(spki).decode()
