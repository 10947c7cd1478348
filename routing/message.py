"""A light, read-only view of a message's header block: what routing reads, nothing more.

Only the header block of the raw bytes is looked at (up to the first empty line), so a 25 MiB message costs
the same as a 2 KiB one. Parsing never raises: garbage yields a view with fewer (or no) headers.
Header values are unfolded (CRLF before whitespace removed, as RFC 5322 and Python's email package do).
Bytes are read as UTF-8 (Odoo 19 decodes raw UTF-8 headers too); undecodable bytes become U+FFFD.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property

from routing.address import decode_name, email_split, is_mailer_daemon

MAX_HEADER_BYTES = 512 * 1024
MAX_HEADER_FIELDS = 2000
_FIELD_NAME = re.compile(r"[!-9;-~]+")
_LINE_END = re.compile(r"\r?\n(?![ \t])")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>]+>")
_FOLD_WS = re.compile(r"[\r\n\t ]+")
LOOP_MARKER = "-loop-detection-bounce-email@"


def header_block(raw: bytes) -> bytes:
    """The bytes before the first empty line (all of `raw` when there is none), bounded."""
    head = raw[:MAX_HEADER_BYTES]
    if head.startswith((b"\r\n", b"\n")):
        return b""
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    return head[: min(ends)] if ends else head


def unfold_references(value: str | None) -> list[str]:
    """Odoo's ``unfold_references``: every ``<…>`` id, with all whitespace inside removed."""
    if not value:
        return []
    return [_FOLD_WS.sub("", ref) for ref in _MSGID.findall(value)]


class MessageView:
    """Header fields of one message, names lower-cased, in order; derived values computed once, lazily."""

    __slots__ = ("__dict__", "_fields")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        by_name: dict[str, list[str]] = {}
        for name, value in fields:
            by_name.setdefault(name.lower(), []).append(value)
        self._fields = by_name

    @classmethod
    def from_bytes(cls, raw: bytes) -> MessageView:
        """Parse only the header block. Never raises."""
        try:
            block = header_block(bytes(raw))
            if block.startswith(b"From "):  # mbox separator line, as `mailgw pipe` may get from an MDA
                nl = block.find(b"\n")
                block = block[nl + 1 :] if nl >= 0 else b""
            text = block.decode("utf-8", errors="replace")
            return cls(cls._parse(text))
        except Exception:  # a view with no headers routes as "no signal", which is the right failure
            return cls()

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

    def get(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def items(self) -> list[tuple[str, str]]:
        return [(k, v) for k, vs in self._fields.items() for v in vs]

    def _addresses(self, name: str) -> list[str]:
        out: list[str] = []
        for value in self._fields.get(name, ()):
            out.extend(email_split(value))
        return out

    # -- what routing reads -----------------------------------------------------------------------------

    @cached_property
    def message_id(self) -> str:
        return (self.get("message-id") or "").strip()

    @cached_property
    def references(self) -> str:
        """Raw References (first field), as Odoo's ``message_dict['references']``."""
        return self.get("references") or ""

    @cached_property
    def in_reply_to(self) -> str:
        return (self.get("in-reply-to") or "").strip()

    @cached_property
    def email_from(self) -> str:
        return self.get("from") or ""

    @cached_property
    def from_address(self) -> str:
        found = email_split(self.email_from)
        return found[0] if found else ""

    @cached_property
    def delivered_to(self) -> list[str]:
        return self._addresses("delivered-to")

    @cached_property
    def to(self) -> list[str]:
        return self._addresses("to")

    @cached_property
    def cc(self) -> list[str]:
        return self._addresses("cc")

    @cached_property
    def resent_to(self) -> list[str]:
        return self._addresses("resent-to")

    @cached_property
    def resent_cc(self) -> list[str]:
        return self._addresses("resent-cc")

    @cached_property
    def odoo_to(self) -> list[str]:
        """Odoo's ``to``: Delivered-To and To (the headers present in the raw message)."""
        return self.delivered_to + self.to

    @cached_property
    def odoo_recipients(self) -> list[str]:
        """Odoo's ``recipients``: Delivered-To, To, Cc, Resent-To, Resent-Cc."""
        return self.delivered_to + self.to + self.cc + self.resent_to + self.resent_cc

    @cached_property
    def content_type(self) -> str:
        """``get_content_type()`` as Python's email package computes it (text/plain when invalid)."""
        value = (self.get("content-type") or "").split(";", 1)[0].strip().lower()
        return value if value.count("/") == 1 else "text/plain"

    @cached_property
    def is_report(self) -> bool:
        """Odoo's content-type bounce test (tolerates ``multipart/report:`` and quoted parameters)."""
        raw = (self.get("content-type") or "").lower().replace(" ", "").replace('"', "")
        return (
            self.content_type == "multipart/report"
            or raw.startswith("multipart/report")
            or "report-type=delivery-status" in raw
        )

    @cached_property
    def is_from_mailer_daemon(self) -> bool:
        return is_mailer_daemon(self.email_from)

    @cached_property
    def auto_submitted(self) -> str:
        return (self.get("auto-submitted") or "").split(";", 1)[0].strip().lower()

    @property
    def is_auto_submitted(self) -> bool:
        """RFC 3834: any value but ``no`` marks automatic mail; routing cares about ``auto-*``."""
        return self.auto_submitted.startswith("auto-")

    @cached_property
    def is_loop_notice_reply(self) -> bool:
        """Odoo's ``_detect_loop_headers``: an answer to one of Odoo's refusal/loop notices (dropped)."""
        refs = [*unfold_references(self.references), self.in_reply_to]
        return any(LOOP_MARKER in ref for ref in refs)

    @cached_property
    def subject(self) -> str:
        return decode_name(self.get("subject") or "")

    @cached_property
    def odoo_objects(self) -> tuple[str, int] | None:
        """``X-Odoo-Objects: <model>-<id>`` (on mail Odoo sent) as (model, id)."""
        return parse_model_id(self.get("x-odoo-objects") or "")


_MODEL_ID = re.compile(r"([a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*)-([1-9][0-9]{0,17})")


def parse_model_id(text: str) -> tuple[str, int] | None:
    """``sale.order-42`` -> (``sale.order``, 42): the form of Odoo's X-Odoo-Objects header."""
    m = _MODEL_ID.fullmatch(text.strip().lower())
    return (m.group(1), int(m.group(2))) if m else None
