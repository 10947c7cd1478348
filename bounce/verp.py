"""VERP return paths: `<bounce_alias>+<token>@<domain>`, one per outbound message and recipient.

The token names the spooled message (its queue id) and the recipient (its index in the envelope) and
carries a keyed MAC, so a forged bounce cannot mark anyone bounced. Format (all lower case, because
some MTAs lower-case local parts)::

    <queue id, lower-cased>[_<case mask>].<recipient index, base 36>.<MAC: 8 base32 chars>

* Queue ids are up to 32 characters of [A-Za-z0-9]. An id without lower-case letters (a ULID, say)
  is carried as is; an id with lower-case letters adds `_<mask>`, the positions of its upper-case
  letters in base 36, so the exact id comes back.
* MAC = HMAC-SHA256(secret, "<queue id>.<index>") truncated to 40 bits, compared in constant time.
* A 26-character ULID with a recipient index under 36 gives a 37-character token.

`decode_legacy` reads Odoo ≤ 14's own form, `<bounce>+<mail_id>-<model>-<res_id>@domain`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

_QUEUE_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TOKEN = re.compile(r"([a-z0-9]{1,32})(?:_([a-z0-9]{1,8}))?\.([a-z0-9]{1,7})\.([a-z2-7]{8})")
_LEGACY = re.compile(r"(\d+)(?:-([\w.]+?))?(?:-(\d+))?")
_MAC_BYTES = 5


@dataclass(frozen=True, slots=True)
class VerpToken:
    queue_id: str
    rcpt_index: int
    valid: bool


@dataclass(frozen=True, slots=True)
class LegacyVerp:
    mail_id: int
    model: str | None
    res_id: int | None


def _mac(secret: bytes, queue_id: str, rcpt_index: int) -> str:
    digest = hmac.new(secret, f"{queue_id}.{rcpt_index}".encode(), hashlib.sha256).digest()
    return base64.b32encode(digest[:_MAC_BYTES]).decode("ascii").lower()


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def encode(bounce_alias: str, domain: str, queue_id: str, rcpt_index: int, secret: bytes) -> str:
    """The full return path `bounce_alias+TOKEN@domain` for one message and recipient."""
    if not _QUEUE_ID.fullmatch(queue_id):
        raise ValueError("queue id must be 1-32 characters of [A-Za-z0-9]")
    if rcpt_index < 0 or rcpt_index >= 36**7:
        raise ValueError("recipient index out of range")
    if not secret:
        raise ValueError("a VERP secret is required")
    token = queue_id.lower()
    if any(c.islower() for c in queue_id):
        mask = sum(1 << i for i, c in enumerate(queue_id) if c.isupper())
        token += "_" + _b36(mask)
    token += f".{_b36(rcpt_index)}.{_mac(secret, queue_id, rcpt_index)}"
    return f"{bounce_alias}+{token}@{domain}"


def _local_extension(address: str) -> str | None:
    address = address.strip().strip("<>").strip()
    local, at, _domain = address.rpartition("@")
    if not at or "+" not in local:
        return None
    return local.split("+", 1)[1]


def decode(address: str, secret: bytes | None) -> VerpToken | None:
    """The token of a VERP address, or None when it is not one. valid=False when the MAC does not
    match (or no secret was given to check it)."""
    ext = _local_extension(address)
    if ext is None:
        return None
    m = _TOKEN.fullmatch(ext.lower())
    if not m:
        return None
    lowered, mask_text, index_text, mac = m.groups()
    if mask_text is None:
        queue_id = lowered.upper()
    else:
        mask = int(mask_text, 36)
        if mask >> len(lowered):
            return None
        queue_id = "".join(c.upper() if mask >> i & 1 else c for i, c in enumerate(lowered))
    rcpt_index = int(index_text, 36)
    valid = bool(secret) and hmac.compare_digest(mac, _mac(secret or b"", queue_id, rcpt_index))
    return VerpToken(queue_id, rcpt_index, valid)


def decode_legacy(address: str) -> LegacyVerp | None:
    """Odoo ≤ 14: `bounce+<mail_id>-<model>-<res_id>@domain` (model and res_id optional)."""
    ext = _local_extension(address)
    if ext is None or len(ext) > 200:
        return None
    m = _LEGACY.fullmatch(ext)
    if not m:
        return None
    mail_id, model, res_id = m.groups()
    return LegacyVerp(int(mail_id), model or None, int(res_id) if res_id else None)
