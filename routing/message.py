"""A light, read-only view of a message's header block: what routing reads, nothing more.

Only the header block of the raw bytes is looked at (up to the first empty line), so a 25 MiB message costs
the same as a 2 KiB one. Parsing never raises: garbage yields a view with fewer (or no) headers.
Header values are unfolded (CRLF before whitespace removed, as RFC 5322 and Python's email package do).
Bytes are read as UTF-8 (Odoo 19 decodes raw UTF-8 headers too); undecodable bytes become U+FFFD.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, overload

from routing.address import decode_name, email_split, is_mailer_daemon

T = TypeVar("T")


class lazy(Generic[T]):
    """``functools.cached_property`` without its lock (3.11 takes an RLock per first access, a third of the
    routing time in the benchmark). Views are used by one task at a time, so a race only computes twice."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> lazy[T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | lazy[T]:
        if obj is None:
            return self
        value = self.func(obj)
        obj.__dict__[self.name] = value
        return value

MAX_HEADER_BYTES = 512 * 1024
MAX_HEADER_FIELDS = 2000
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_LINE_END = re.compile(r"\r?\n(?![ \t])")
# The fields routing reads, found in one C-level scan; any other name triggers a full parse on demand.
ROUTING_FIELDS = frozenset({"from", "to", "cc", "delivered-to", "resent-to", "resent-cc", "references",
                            "in-reply-to", "message-id", "content-type", "auto-submitted", "subject",
                            "x-odoo-objects"})
# Anchored on a literal newline (the text gets one prepended) rather than ^ with MULTILINE: the regex engine
# then jumps from newline to newline, twice as fast on real headers.
_ROUTING_FIELD = re.compile(
    r"\n(" + "|".join(re.escape(n) for n in sorted(ROUTING_FIELDS, key=len, reverse=True))
    + r")[ \t]*:(.*(?:\r?\n[ \t].*)*)",
    re.IGNORECASE)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>]+>")
_FOLD_WS = re.compile(r"[\r\n\t ]+")
LOOP_MARKER = "-loop-detection-bounce-email@"
MAX_REFERENCES = 32


def header_block(raw: bytes) -> bytes:
    """The bytes before the first empty line (all of `raw` when there is none), bounded."""
    if raw.startswith((b"\r\n", b"\n")):
        return b""
    crlf = raw.find(b"\r\n\r\n", 0, MAX_HEADER_BYTES)
    # Look for a bare-LF blank line only before the CRLF one: a CRLF message has none, and searching the
    # whole body for it would cost more than the rest of the parse.
    limit = crlf if crlf >= 0 else MAX_HEADER_BYTES
    lf = raw.find(b"\n\n", 0, limit)
    mixed = raw.find(b"\n\r\n", 0, limit)  # an LF line followed by a CRLF blank line
    ends = [i for i in (crlf, lf, mixed) if i >= 0]
    return raw[: min(ends)] if ends else raw[:MAX_HEADER_BYTES]


def unfold_references(value: str | None) -> list[str]:
    """Odoo's ``unfold_references``: every ``<…>`` id, with all whitespace inside removed."""
    if not value:
        return []
    return [_FOLD_WS.sub("", ref) for ref in _MSGID.findall(value)]


class MessageView:
    """Header fields of one message, names lower-cased, in order; derived values computed once, lazily."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._text: str | None = None  # set when only the routing fields were parsed yet
        self._fields = self._group(fields)

    @staticmethod
    def _group(fields: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
        by_name: dict[str, list[str]] = {}
        for name, value in fields:
            by_name.setdefault(name.lower(), []).append(value)
        return by_name

    @classmethod
    def from_bytes(cls, raw: bytes) -> MessageView:
        """Parse only the header block, and of it only the fields routing reads. Never raises."""
        try:
            block = header_block(bytes(raw))
            if block.startswith(b"From "):  # mbox separator line, as `mailgw pipe` may get from an MDA
                nl = block.find(b"\n")
                block = block[nl + 1 :] if nl >= 0 else b""
            text = block.decode("utf-8", errors="replace")
            fields: dict[str, list[str]] = {}
            for name, value in _ROUTING_FIELD.findall("\n" + text):
                if "\n" in value:
                    value = _FOLD.sub("", value)
                key = name.lower()
                if key in fields:
                    fields[key].append(value.strip())
                else:
                    fields[key] = [value.strip()]
            view = cls.__new__(cls)
            view._fields = fields
            view._text = text
            return view
        except Exception:  # a view with no headers routes as "no signal", which is the right failure
            return cls()

    def _full(self) -> dict[str, list[str]]:
        if self._text is not None:
            try:
                self._fields = self._group(self._parse(self._text))
            except Exception:
                pass
            self._text = None
        return self._fields

    @classmethod
    def from_text(cls, text: str) -> MessageView:
        try:
            return cls.from_bytes(text.encode("utf-8", errors="replace"))
        except Exception:
            return cls()

    @staticmethod
    def _parse(text: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for line in _LINE_END.split(text, MAX_HEADER_FIELDS):
            name, colon, value = line.partition(":")
            if not colon:
                continue
            name = name.rstrip(" \t")
            if not _FIELD_NAME.fullmatch(name):
                continue
            if "\n" in value:
                value = _FOLD.sub("", value)
            out.append((name, value.strip()))
        return out

    # -- raw access -------------------------------------------------------------------------------------

    def _values(self, name: str) -> list[str]:
        key = name.lower()
        fields = self._fields if key in ROUTING_FIELDS else self._full()
        return fields.get(key, [])

    def get(self, name: str) -> str | None:
        values = self._values(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return list(self._values(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._values(name))

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, vs in self._full().items() for v in vs]

    def _first(self, key: str) -> str:
        """First value of a routing field (`key` lower-cased), "" when absent."""
        values = self._fields.get(key)
        return values[0] if values else ""

    def _addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for value in self._fields.get(name, ()):
            out.extend(email_split(value))
        return out

    # -- what routing reads -----------------------------------------------------------------------------

    @lazy
    def message_id(self) -> str:
        return self._first("message-id").strip()

    @lazy
    def references(self) -> str:
        """Raw References (first field), as Odoo's ``message_dict['references']``."""
        return self._first("references")

    @lazy
    def in_reply_to(self) -> str:
        return self._first("in-reply-to").strip()

    @lazy
    def reference_ids(self) -> tuple[str, ...]:
        """Odoo's step 3: References, or In-Reply-To only when References is empty; unfolded; ``reply_to``
        ids dropped; the last 32."""
        thread_references = self.references or self.in_reply_to
        refs = [r.strip() for r in unfold_references(thread_references) if "reply_to" not in r]
        return tuple(refs[-MAX_REFERENCES:])

    @lazy
    def email_from(self) -> str:
        return self._first("from")

    @lazy
    def from_address(self) -> str:
        found = email_split(self.email_from)
        return found[0] if found else ""

    @lazy
    def delivered_to(self) -> list[str]:
        return self._addresses("delivered-to")

    @lazy
    def to(self) -> list[str]:
        return self._addresses("to")

    @lazy
    def cc(self) -> list[str]:
        return self._addresses("cc")

    @lazy
    def resent_to(self) -> list[str]:
        return self._addresses("resent-to")

    @lazy
    def resent_cc(self) -> list[str]:
        return self._addresses("resent-cc")

    @lazy
    def odoo_to(self) -> list[str]:
        """Odoo's ``to``: Delivered-To and To (the headers present in the raw message)."""
        return self.delivered_to + self.to

    @lazy
    def odoo_recipients(self) -> list[str]:
        """Odoo's ``recipients``: Delivered-To, To, Cc, Resent-To, Resent-Cc."""
        return self.delivered_to + self.to + self.cc + self.resent_to + self.resent_cc

    @lazy
    def content_type(self) -> str:
        """``get_content_type()`` as Python's email package computes it (text/plain when invalid)."""
        value = self._first("content-type").split(";", 1)[0].strip().lower()
        return value if value.count("/") == 1 else "text/plain"

    @lazy
    def is_report(self) -> bool:
        """Odoo's content-type bounce test (tolerates ``multipart/report:`` and quoted parameters)."""
        raw = self._first("content-type").lower().replace(" ", "").replace('"', "")
        return (
            self.content_type == "multipart/report"
            or raw.startswith("multipart/report")
            or "report-type=delivery-status" in raw
        )

    @lazy
    def is_from_mailer_daemon(self) -> bool:
        return is_mailer_daemon(self.email_from)

    @lazy
    def auto_submitted(self) -> str:
        return self._first("auto-submitted").split(";", 1)[0].strip().lower()

    @property
    def is_auto_submitted(self) -> bool:
        """RFC 3834: any value but ``no`` marks automatic mail; routing cares about ``auto-*``."""
        return self.auto_submitted.startswith("auto-")

    @lazy
    def is_loop_notice_reply(self) -> bool:
        """Odoo's ``_detect_loop_headers``: an answer to one of Odoo's refusal/loop notices (dropped)."""
        if LOOP_MARKER not in self.in_reply_to and LOOP_MARKER not in _FOLD_WS.sub("", self.references):
            return False  # an unfolded id is a substring of the references without whitespace: nothing to find
        refs = [*unfold_references(self.references), self.in_reply_to]
        return any(LOOP_MARKER in ref for ref in refs)

    @lazy
    def subject(self) -> str:
        return decode_name(self._first("subject"))

    @lazy
    def odoo_objects(self) -> tuple[str, int] | None:
        """``X-Odoo-Objects: <model>-<id>`` (on mail Odoo sent) as (model, id)."""
        return parse_model_id(self._first("x-odoo-objects"))


_MODEL_ID = re.compile(r"([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)-([1-9][0-9]{0,17})")


def parse_model_id(text: str) -> tuple[str, int] | None:
    """``sale.order-42`` -> (``sale.order``, 42): the form of Odoo's X-Odoo-Objects header."""
    m = _MODEL_ID.fullmatch(text.strip().lower())
    return (m.group(1), int(m.group(2))) if m else None
