"""A sliding-window counter mirroring Odoo's per-sender loop guard (``mail.gateway.loop.minutes/threshold``).

Odoo counts, within the window, the records of a model created by the sender (creation routes) or the
sender's email messages on a record (update routes), and drops the mail once that count reaches the
threshold. The gateway counts what it delivered per (instance, sender, target) where target is
``model`` (creation) or ``model/id`` (update), so its count never exceeds Odoo's and refusing at
the door (451) only happens to mail Odoo would drop anyway.

Pure: no clock of its own (`now` is passed in); state is in memory, bounded, and survives directory swaps
because the gateway keeps one guard and hands it to every new Router.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from routing.address import email_normalize

Key = tuple[str, str, str]


def target_key(model: str | None, thread_id: int | None) -> str | None:
    """``model`` for a creation route, ``model/id`` for an update route, None when unknown."""
    if not model:
        return None
    return f"{model}/{thread_id}" if thread_id else model


class LoopGuard:
    def __init__(self, max_keys: int = 100_000, max_window: float = 7 * 86400.0) -> None:
        self.max_keys = max_keys
        self.max_window = max_window
        self._hits: OrderedDict[Key, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._hits)

    @staticmethod
    def _key(sender: str, instance: str, target: str | None) -> Key | None:
        who = email_normalize(sender) if sender and sender != "<>" else None
        return (instance, who, target or "") if who else None

    def record(self, sender: str, instance: str, now: float, target: str | None = None) -> None:
        """Count one message from `sender` delivered to `target` on `instance`."""
        key = self._key(sender, instance, target)
        if key is None:
            return
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        else:
            self._hits.move_to_end(key)
        hits.append(now)
        # A guard must never grow without bound: drop very old hits and the least recently used senders.
        while hits and hits[0] <= now - self.max_window:
            hits.popleft()
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)

    def count(self, sender: str, instance: str, now: float, window: float, target: str | None = None) -> int:
        key = self._key(sender, instance, target)
        hits = self._hits.get(key) if key else None
        if not hits:
            return 0
        cutoff = now - window
        while hits and hits[0] <= cutoff - self.max_window:
            hits.popleft()
        return sum(1 for t in hits if cutoff < t <= now)

    def check(
        self, sender: str, instance: str, now: float, *, minutes: int, threshold: int, target: str | None = None,
    ) -> bool:
        """True when Odoo would drop the next message (count in window >= threshold).

        A threshold of 0 or less disables the door check: Odoo would read it literally and block everyone,
        which the gateway leaves to Odoo rather than refuse all mail.
        """
        if threshold <= 0 or minutes <= 0:
            return False
        return self.count(sender, instance, now, minutes * 60.0, target) >= threshold
