"""Reply detection inputs: which Message-Ids to look up, and which known message Odoo would reply to.

Odoo (message_route step 3) takes References, or In-Reply-To only when References is empty, unfolds the
ids, drops those containing ``reply_to`` (posts made with ``reply_to_force_new``) and keeps the last 32;
then the newest `mail.message` (highest id) among the matches gives the model and record. Odoo never
parses model or record out of an ``…-openerp-<id>-<model>@host`` id, and neither does this module.

The lookup itself is I/O and belongs to the inbound worker (`OdooClient.find_message`, with its bounded TTL
cache sized by `routing.reply_cache_size/ttl`); the worker may add Message-Ids the gateway relayed for Odoo
(`source="relayed"`, model and record from the relayed mail's X-Odoo-Objects header).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from routing.message import MAX_REFERENCES, MessageView

__all__ = ["MAX_REFERENCES", "KnownMessage", "pick_reply", "reference_ids"]


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

