"""What the gateway adds to a message on its way into Odoo, and how it crosses JSON without losing bytes.

Prepended, never inserted or rewritten (the spooled bytes stay as received; design: Spool):
- ``Return-Path: <envelope sender>`` — Odoo sends its refusals there, verbatim (docs/odoo.md §10.4);
- ``Delivered-To: <rcpt>`` per envelope recipient of this delivery that the headers do not already show —
  Odoo reads it for routing (as To) and never reads X-Original-To / Envelope-To (docs/odoo.md §10.2);
- ``Received:`` — the hop, for whoever reads the original later;
- ``Message-Id:`` only when the message has none, derived from the queue id, so a retry carries the same id
  and Odoo's duplicate check (docs/odoo.md §10.1) drops it instead of posting twice.

JSON-2 carries text and Odoo encodes it as UTF-8 (docs/odoo.md §10.1): a message that is valid UTF-8 goes as
is (byte-identical on arrival); otherwise `json_safe_message` re-encodes just the offending pieces — leaf
bodies to base64, 8-bit header words to ``=?unknown-8bit?b?…?=`` — so every decoded byte is recovered by
Odoo's parser.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence

from gateway.headers import clean_value, header_fields, line_ending, received_field, split_message, unfold


def stable_message_id(queue_id: str, domain: str) -> str:
    """Deterministic per spooled message: the same on every retry, unique per queue entry."""
    domain = (domain or "mailgw.invalid").strip().strip(".").lower() or "mailgw.invalid"
    return f"<mailgw.{queue_id.lower()}@{domain}>"


def delivery_headers(*, mail_from: str, recipients: Sequence[str], queue_id: str, received_at: float,
                     intake: str = "smtp", helo: str | None = None, peer: str | None = None,
                     hostname: str = "localhost", message_id: str | None = None, eol: bytes = b"\r\n",
                     delivered_to: Sequence[str] | None = None, client: Mapping[str, str] | None = None) -> bytes:
    """The block prepended before delivery (see the module docstring), in the message's line ending.

    `delivered_to` (default: every recipient) are the recipients written as Delivered-To; see
    `routing.decision.DeliveryPlan.delivered_to` for why recipients the headers already show are left out.
    `client` is the original client a trusted relay named (XFORWARD, spool Envelope.client): the Received line then
    names it, as Postfix's own after a content filter does, instead of the relay on the loopback.
    """
    lines = [f"Return-Path: <{clean_value(mail_from)}>"]
    lines += [f"Delivered-To: {clean_value(r)}" for r in (recipients if delivered_to is None else delivered_to)]
    lines.append(received_field(hostname=hostname, queue_id=queue_id, intake=intake, received_at=received_at,
                                helo=helo, peer=peer, recipients=recipients, client=client))
    if message_id:
        lines.append(f"Message-Id: {clean_value(message_id)}")
    text = "\r\n".join(lines) + "\r\n"
    if eol != b"\r\n":
        text = text.replace("\r\n", eol.decode("ascii"))
    return text.encode("utf-8")


# -- JSON-2: keep every byte recoverable --------------------------------------------------------------------

_CTE = re.compile(rb"^content-transfer-encoding[ \t]*:", re.IGNORECASE)
_WORD = rb'[^\s<>,;:@()"\\\[\]]+'
_RUN = re.compile(rb"%s(?:(?:\r?\n)?[ \t]+%s)*" % (_WORD, _WORD))
_PARAM_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)


def _utf8_ok(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def json_safe_message(raw: bytes) -> str:
    """Text Odoo's JSON-2 `message_process` can take: identical when `raw` is UTF-8, else re-encoded."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out = _reencode_entity(raw, depth=0)
    # Anything left (a pathological structure) is made valid by a reversible latin-1 reading.
    return out.decode("utf-8") if _utf8_ok(out) else out.decode("latin-1")


def _content_type(head: bytes) -> tuple[bytes, bytes | None, bytes]:
    """(type/subtype lower-cased, boundary, content-transfer-encoding lower-cased) from a header block."""
    ctype, boundary, cte = b"text/plain", None, b""
    for name, data in header_fields(head):
        lname = name.lower()
        value = unfold(data.split(b":", 1)[1] if b":" in data else b"").strip()
        if lname == b"content-type" and ctype == b"text/plain":
            ctype = value.split(b";", 1)[0].strip().lower() or b"text/plain"
            m = _PARAM_BOUNDARY.search(value)
            if m:
                boundary = m.group(1) or m.group(2)
        elif lname == b"content-transfer-encoding" and not cte:
            cte = value.lower()
    return ctype, boundary, cte


def _reencode_entity(entity: bytes, depth: int) -> bytes:
    if _utf8_ok(entity):
        return entity
    head, blank, body = split_message(entity)
    ctype, boundary, cte = _content_type(head)
    new_head = _reencode_headers(head)
    if depth < 20 and ctype.startswith(b"multipart/") and boundary:
        return new_head + blank + _reencode_multipart(body, boundary, depth)
    if depth < 20 and ctype in (b"message/rfc822", b"message/global") and cte in (b"", b"7bit", b"8bit", b"binary"):
        return new_head + blank + _reencode_entity(body, depth + 1)
    if _utf8_ok(body):
        return new_head + blank + body
    eol = line_ending(entity)
    if cte == b"base64":
        # Base64 decoders skip bytes outside the alphabet; dropping them decodes to the same payload.
        return new_head + blank + bytes(b for b in body if b < 0x80)
    payload = binascii.a2b_qp(body) if cte == b"quoted-printable" else body
    kept = b"".join(data for name, data in header_fields(new_head) if not _CTE.match(data))
    encoded = base64.encodebytes(payload)
    if eol != b"\n":
        encoded = encoded.replace(b"\n", eol)
    if not blank:
        blank = eol
    return kept + b"Content-Transfer-Encoding: base64" + eol + blank + encoded


def _reencode_multipart(body: bytes, boundary: bytes, depth: int) -> bytes:
    delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)")
    out: list[bytes] = []
    pos = 0
    for m in delim.finditer(body):
        chunk = body[pos:m.start()]
        out.append(_latin1_to_utf8(chunk) if not out else _reencode_entity(chunk, depth + 1))
        out.append(m.group(0))
        pos = m.end()
        if m.group(1):  # close delimiter: the rest is epilogue
            out.append(_latin1_to_utf8(body[pos:]))
            return b"".join(out)
    if out:  # no close delimiter: the last part runs to the end
        out.append(_reencode_entity(body[pos:], depth + 1))
    else:
        out.append(_latin1_to_utf8(body))
    return b"".join(out)


def _latin1_to_utf8(data: bytes) -> bytes:
    """Preamble/epilogue are not content; a reversible reading keeps them readable."""
    return data if _utf8_ok(data) else data.decode("latin-1").encode("utf-8")


def _reencode_headers(head: bytes) -> bytes:
    if _utf8_ok(head):
        return head
    out = []
    for _name, data in header_fields(head):
        if _utf8_ok(data):
            out.append(data)
            continue
        field, sep, value = data.partition(b":")
        out.append(field + sep + _RUN.sub(_encode_run, value))
    return b"".join(out)


def _encode_run(m: re.Match[bytes]) -> bytes:
    """An 8-bit run of words becomes one encoded word; plain words at its edges stay as they are."""
    run = m.group(0)
    if _utf8_ok(run):
        return run
    words = re.split(rb"((?:\r?\n)?[ \t]+)", run)  # words at even indexes, separators at odd ones
    first = next(i for i in range(0, len(words), 2) if not _utf8_ok(words[i]))
    last = max(i for i in range(0, len(words), 2) if not _utf8_ok(words[i]))
    middle = unfold(b"".join(words[first:last + 1]))
    encoded = b"=?unknown-8bit?b?" + base64.b64encode(middle) + b"?="
    return b"".join(words[:first]) + encoded + b"".join(words[last + 1:])
