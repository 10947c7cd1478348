"""A small, forgiving MIME reader for bounce mail.

Bounces are often broken (bare CR line ends, missing boundaries, wrong charsets, truncated parts), and
the gateway parses many of them, so this reads only what bounce parsing needs: headers, the part tree,
and decoded text. It works on text decoded as latin-1 (one character per byte, nothing lost) and only
decodes a part's transfer encoding and charset when its text is asked for. Nothing here raises on bad
input; limits on depth and part count keep hostile input cheap.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from email.header import decode_header

MAX_DEPTH = 8
MAX_PARTS = 200
MAX_HEADER_LINES = 2000

_FOLD = re.compile(r"\n[ \t]+")
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"?|([^;\s]*))')
_ENCODED_WORD = "=?"


def normalize(raw: bytes) -> str:
    """CRLF and bare CR become LF; bytes become latin-1 text (lossless); an mbox "From " line goes."""
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text = raw.decode("latin-1")
    if text.startswith("From "):
        nl = text.find("\n")
        text = text[nl + 1 :] if nl >= 0 else ""
    return text


def split_head(text: str) -> tuple[str, str]:
    """Header block and body: split at the first empty line (a message with no body is all header)."""
    if text.startswith("\n"):
        return "", text[1:]
    end = text.find("\n\n")
    if end < 0:
        return text, ""
    return text[:end], text[end + 2 :]


def parse_headers(block: str) -> list[tuple[str, str]]:
    """Header fields in order, names lower-cased, values unfolded and stripped. Junk lines are skipped."""
    out: list[tuple[str, str]] = []
    if not block:
        return out
    if "\n " in block or "\n\t" in block:
        block = _FOLD.sub(" ", block)
    for line in block.split("\n", MAX_HEADER_LINES)[:MAX_HEADER_LINES]:
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        # A field name is printable ASCII without spaces (RFC 5322 §3.6.8); anything else is junk.
        if colon and name and name.isascii() and name.isprintable() and " " not in name:
            out.append((name.lower(), value.strip()))
    return out


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (=?charset?b?...?=); anything undecodable is kept as is."""
    if not value.isascii():
        # Raw 8-bit header (read as latin-1): most likely UTF-8.
        try:
            value = value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            pass
    if _ENCODED_WORD not in value:
        return value
    try:
        chunks = []
        for data, charset in decode_header(value):
            if isinstance(data, bytes):
                chunks.append(_decode_bytes(data, charset or "latin-1"))
            else:
                chunks.append(data)
        return "".join(chunks)
    except Exception:  # email.header raises a variety of errors on garbage
        return value


def _decode_bytes(data: bytes, charset: str) -> str:
    charset = charset.strip().strip('"').lower() or "utf-8"
    if charset in ("us-ascii", "ascii", "utf8", "unknown-8bit", "x-unknown", "default"):
        charset = "utf-8"
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def content_type(value: str) -> tuple[str, dict[str, str]]:
    """`type/subtype` lower-cased and its parameters (names lower-cased, quotes removed)."""
    if not value:
        return "text/plain", {}
    # A malformed "multipart/report:" or trailing junk still says what it is.
    words = value.split(";", 1)[0].lower().replace(":", " ").split()
    main = words[0] if words else "text/plain"
    params: dict[str, str] = {}
    for m in _PARAM.finditer(value):
        name = m.group(1).lower()
        if name not in params:
            params[name] = m.group(2) if m.group(2) is not None else (m.group(3) or "")
    return main, params


@dataclass(slots=True)
class Part:
    """One MIME entity: headers, type, raw (latin-1) body and, for multiparts, its children."""

    headers: list[tuple[str, str]]
    ctype: str
    params: dict[str, str]
    body: str
    parts: list[Part] = field(default_factory=list)
    _text: str | None = None

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def header_map(self) -> dict[str, str]:
        """First value of each field."""
        out: dict[str, str] = {}
        for key, value in self.headers:
            out.setdefault(key, value)
        return out

    @property
    def is_multipart(self) -> bool:
        return bool(self.parts) or self.ctype.startswith("multipart/")

    def text(self) -> str:
        """The body with its transfer encoding and charset undone (cached)."""
        if self._text is None:
            self._text = decode_body(self.body, self.get("content-transfer-encoding"),
                                     self.params.get("charset", ""))
        return self._text

    def embedded_text(self) -> str:
        """The message inside a message/rfc822 part, as normalized text ("" for other parts)."""
        if self.ctype not in ("message/rfc822", "message/global"):
            return ""
        cte = self.get("content-transfer-encoding").lower()
        inner = self.body if cte not in ("base64", "quoted-printable") else decode_body(self.body, cte, "latin-1")
        return inner.lstrip("\n")

    def walk(self) -> list[Part]:
        """This part and all parts below it, depth first, in document order."""
        out: list[Part] = []
        stack = [self]
        while stack and len(out) < MAX_PARTS:
            part = stack.pop()
            out.append(part)
            stack.extend(reversed(part.parts))
        return out


def to_bytes(text: str) -> bytes:
    """Back to bytes: latin-1 for text read from the wire; UTF-8 for text that was already decoded
    (an original quoted inside a decoded notification)."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def decode_body(body: str, cte: str, charset: str) -> str:
    cte = cte.strip().lower()
    if cte == "base64":
        raw = _b64(body)
    elif cte == "quoted-printable":
        try:
            raw = binascii.a2b_qp(to_bytes(body))
        except (binascii.Error, ValueError):
            raw = to_bytes(body)
    else:
        if not charset and body.isascii():
            return body
        raw = to_bytes(body)
    if not charset:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")
    return _decode_bytes(raw, charset)


def _b64(body: str) -> bytes:
    """Forgiving base64: junk characters and bad padding are ignored, a dangling character dropped."""
    data = _NOT_B64.sub("", body)
    if len(data) % 4 == 1:
        data = data[:-1]
    try:
        return binascii.a2b_base64((data + "=" * (-len(data) % 4)).encode("ascii"))
    except (binascii.Error, ValueError):
        return b""


_NOT_B64 = re.compile(r"[^A-Za-z0-9+/]+")


def parse(text: str, depth: int = 0, budget: list[int] | None = None, *, shallow: bool = False) -> Part:
    """Parse normalized message text into a Part tree. An embedded message (message/rfc822) is read
    `shallow`: its headers, not its own MIME tree, which a bounce parser never needs."""
    if budget is None:
        budget = [MAX_PARTS]
    head, body = split_head(text)
    headers = parse_headers(head)
    ctype_value = ""
    for key, value in headers:
        if key == "content-type":
            ctype_value = value
            break
    ctype, params = content_type(ctype_value)
    part = Part(headers, ctype, params, body)
    budget[0] -= 1
    if shallow or depth >= MAX_DEPTH or budget[0] <= 0:
        return part
    if ctype.startswith("multipart/"):
        chunks = _split_multipart(body, params.get("boundary", ""))
        part.parts = [parse(chunk, depth + 1, budget) for chunk in chunks if budget[0] > 0]
    elif ctype in ("message/rfc822", "message/global") and body.strip():
        part.parts = [parse(part.embedded_text(), depth + 1, budget, shallow=True)]
    return part


def _guess_boundary(body: str) -> str:
    """The boundary actually used, when the declared one is missing or wrong (it happens): the first
    `--token` line whose token is not only dashes."""
    pos = 0 if body.startswith("--") else body.find("\n--") + 1
    while pos > 0 or body.startswith("--"):
        end = body.find("\n", pos)
        line = body[pos + 2 : end if end >= 0 else len(body)].rstrip(" \t")
        if line.endswith("--"):
            line = line[:-2]
        if line and not line.isspace() and line.strip("-") and not any(c.isspace() for c in line):
            return line
        if end < 0:
            return ""
        pos = body.find("\n--", end) + 1
        if pos <= 0:
            return ""
    return ""


def _split_multipart(body: str, boundary: str) -> list[str]:
    """Body parts between `--boundary` lines; a missing close delimiter ends the last part at EOF."""
    if not boundary or "--" + boundary not in body:
        boundary = _guess_boundary(body)
        if not boundary:
            return []
    delim = "--" + boundary
    chunks: list[str] = []
    pos = 0 if body.startswith(delim) else body.find("\n" + delim) + 1
    if pos <= 0 and not body.startswith(delim):
        return chunks
    while len(chunks) < MAX_PARTS:
        if body.startswith(delim + "--", pos):
            break
        line_end = body.find("\n", pos)
        if line_end < 0:
            break
        start = line_end + 1
        nxt = body.find("\n" + delim, start - 1)
        if nxt < 0:
            chunks.append(body[start:])
            break
        chunks.append(body[start:nxt])
        pos = nxt + 1
    return chunks


def parse_message(raw: bytes) -> Part:
    return parse(normalize(raw))
