"""Is it a reply? The message's References that an owning Odoo instance knows, or that name mail the gateway
relayed for Odoo (the outbound spool): what makes the router treat it as a reply."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.errors import PermFailure, TempFailure
from gateway.odoo.client import OdooClient
from gateway.spool import Direction, Spool
from routing.message import MessageView
from routing.replies import KnownMessage
from routing.router import Router


def known_message(instance: str, row: Mapping[str, Any]) -> KnownMessage:
    return KnownMessage(instance=instance, model=row.get("model") or None, res_id=row.get("res_id") or None,
                        message_id=str(row.get("message_id") or ""), id=int(row.get("id") or 0))


async def known_replies(router: Router, owner_of: Callable[[str], str | None], clients: dict[str, OdooClient],
                        spool: Spool, view: MessageView, recipients: Sequence[str]) -> dict[str, Any]:
    """The message's References that Odoo (or the outbound spool) knows: what makes it a reply. Raises
    TempFailure (with `.instance`) when an owning instance cannot be asked."""
    known: dict[str, Any] = {}
    refs = router.reference_ids(view)
    if refs:
        owners = dict.fromkeys(o for r in recipients
                               if (o := owner_of(r.rpartition("@")[2])) in clients)
        for instance in owners:
            try:
                row = await clients[instance].find_message(refs)
            except TempFailure as exc:
                exc.instance = instance  # type: ignore[attr-defined]
                raise
            except PermFailure:
                row = None
            if row and row.get("message_id") and row["message_id"] not in known:
                known[row["message_id"]] = known_message(instance, row)
        for mid, relayed in (await _relayed(owner_of, spool, refs)).items():
            known.setdefault(mid, relayed)
    return known


async def _relayed(owner_of: Callable[[str], str | None], spool: Spool, refs: Sequence[str]) -> dict[str, Any]:
    """Message-Ids of mail the gateway relayed for Odoo (outbound spool), with the record from its
    X-Odoo-Objects header: a reply is recognised even when Odoo's own lookup found nothing."""
    out: dict[str, Any] = {}
    for mid, entries in (await spool.find_message_ids(list(refs))).items():
        for e in entries:
            if e.direction != Direction.OUTBOUND or mid in out:
                continue
            instance = owner_of(e.envelope.mail_from.rpartition("@")[2])
            if not instance:
                continue
            objects = MessageView.from_bytes(await spool.raw(e.queue_id)).odoo_objects
            if objects:
                out[mid] = KnownMessage(instance=instance, model=objects[0], res_id=objects[1], message_id=mid,
                                        source="relayed")
    return out
