"""Reply detection inputs: which Message-Ids to look up, what was found, and a bounded cache of findings.

Odoo (message_route step 3) takes References, or In-Reply-To only when References is empty, unfolds the
ids, drops those containing ``reply_to`` (posts made with ``reply_to_force_new``) and keeps the last 32;
then the newest `mail.message` (highest id) among the matches gives the model and record. Odoo never
parses model or record out of an ``…-openerp-<id>-<model>@host`` id, and neither does this module.

The lookup itself is I/O and belongs to the inbound worker; it stores what it found in `KnownCache` (pure,
clock injected) so that a thread's replies cost one Odoo call per TTL, not one per message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from routing.message import MAX_REFERENCES, MessageView

__all__ = ["MAX_REFERENCES", "KnownCache", "KnownMessage", "pick_reply", "reference_ids"]


def reference_ids(msg: MessageView) -> list[str]:
    """The Message-Ids Odoo looks up for a reply, in header order (newest last). Computed once per view."""
    return list(msg.reference_ids)


@dataclass(frozen=True, slots=True)
class KnownMessage:
    """A Message-Id an Odoo instance knows (`mail.message`), or one the gateway relayed for it."""

    instance: str
    model: str | None
    res_id: int | None
    message_id: str
    id: int = 0  # mail.message id: Odoo prefers the highest; 0 when unknown (relayed-ids table)
    source: Literal["odoo", "relayed"] = "odoo"


def pick_reply(refs: Sequence[str], known: Mapping[str, KnownMessage], instance: str) -> KnownMessage | None:
    """The message Odoo would reply to on `instance`: highest mail.message id, then latest in References."""
    best: KnownMessage | None = None
    best_key = (-1, -1)
    for pos, ref in enumerate(refs):
        hit = known.get(ref)
        if hit is None or hit.instance != instance:
            continue
        key = (hit.id, pos)
        if key > best_key:
            best, best_key = hit, key
    return best


class KnownCache:
    """Bounded LRU of Message-Id lookups per instance, with a TTL; remembers misses too (as None).

    Pure: the caller passes `now`. Misses are remembered for a shorter time, since a message Odoo sends
    right now becomes known a moment later.
    """

    def __init__(self, size: int = 10000, ttl: float = 3600.0, miss_ttl: float = 60.0) -> None:
        self.size = size
        self.ttl = ttl
        self.miss_ttl = min(miss_ttl, ttl)
        self._data: OrderedDict[tuple[str, str], tuple[float, KnownMessage | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, instance: str, message_id: str, now: float) -> tuple[bool, KnownMessage | None]:
        """(hit, value): hit is False when the id must be looked up on Odoo."""
        key = (instance, message_id)
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if now >= expires:
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, instance: str, message_id: str, value: KnownMessage | None, now: float) -> None:
        if self.size <= 0:
            return
        key = (instance, message_id)
        self._data[key] = (now + (self.ttl if value is not None else self.miss_ttl), value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def split(self, instance: str, ids: Iterable[str], now: float) -> tuple[dict[str, KnownMessage], list[str]]:
        """Cached hits for `ids` and the ids still to look up on `instance`."""
        found: dict[str, KnownMessage] = {}
        missing: list[str] = []
        for mid in ids:
            hit, value = self.get(instance, mid, now)
            if not hit:
                missing.append(mid)
            elif value is not None:
                found[mid] = value
        return found, missing
