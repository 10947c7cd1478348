"""What waits while an Odoo instance is away, and when it goes again (docs/odoo.md §4). Used by the inbound worker.

- **Parked, not retried per probe.** Mail that can only be deferred because its instance's breaker is open
  is due at `delivery.retry_max` at the latest (never past its lifetime), and woken when the breaker closes.
  The breaker's probe is `authenticate` (gateway/odoo/client.py), which needs no mail: nothing parked is
  claimed while the breaker is open, so an outage costs each message a few spool writes, however many breaker
  periods it lasts. (The retry_max cap is what a lost wake-up costs at worst: Postfix's queue manager bounds
  its retries of a dead destination by maximal_backoff_time the same way.)
- **The backlog follows a first batch.** When the breaker closes, the oldest `delivery.concurrency` waiting
  entries are woken; the rest follows once one of them reached Odoo. If the instance fails again at once (it
  answers `authenticate` but not `message_process`), only that batch was spent, not the whole backlog.
- **Per-sender order.** While a sender's oldest message waits for its instance, its later mail waits behind
  it (a `SenderHold`), and the intake spools such mail deferred at once (`intake_hold`).
- **Restarts.** The waiting sets live in memory; `adopt` rebuilds them from the spool at start, and each
  instance then starts as if its breaker had just closed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from gateway.config import Config
from gateway.odoo.client import OdooClient
from gateway.spool import SpoolEntry


@dataclasses.dataclass(slots=True)
class SenderHold:
    """A sender's oldest message is waiting for its instance to come back: later ones wait behind it."""

    queue_id: str
    received_at: float
    until: float
    instance: str

    def active(self) -> bool:
        return self.until > time.time()

    def applies_to(self, entry: SpoolEntry) -> bool:
        return entry.queue_id != self.queue_id and self.active() and entry.envelope.received_at >= self.received_at

    @property
    def next_attempt_at(self) -> float:
        """For mail held behind it: just after the held message's own next attempt."""
        return self.until + 0.001

    @property
    def reason(self) -> str:
        return f"waiting behind {self.queue_id} (same sender) for odoo {self.instance}"


def sender_lane(mail_from: str, queue_id: str) -> str:
    """The delivery lane of an envelope sender (one delivery at a time, in arrival order)."""
    sender = mail_from.strip().lower()
    # Bounces (null sender) have no order to keep: each is its own lane.
    return sender if sender else f"<>{queue_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class IntakeHold:
    """Spool this arriving message deferred until `until` (see OutagePolicy.intake_hold); tell `spooled` its id."""

    until: float
    reason: str
    instances: tuple[str, ...]
    _register: Callable[[str, Sequence[str]], None]

    def spooled(self, queue_id: str) -> None:
        self._register(queue_id, self.instances)


class OutagePolicy:
    def __init__(self, config: Config, clients: Mapping[str, OdooClient]):
        self.config = config
        self.delivery = config.delivery
        self.clients = clients
        self.waiting: dict[str, set[str]] = {name: set() for name in clients}  # parked, by instance
        self.proving: dict[str, set[str]] = {}  # the first batch woken after the instance came back
        self.holds: dict[str, SenderHold] = {}  # by sender lane

    def is_down(self, instance: str) -> bool:
        client = self.clients.get(instance)
        return client is not None and client.breaker.state != "closed"

    def parked_until(self, received_at: float, not_before: float) -> float:
        """When mail waiting for a down instance is due, if no wake-up comes first."""
        cap = min(time.time() + self.delivery.retry_max, received_at + self.delivery.lifetime)
        return max(not_before, cap)

    # -- what waits ------------------------------------------------------------------------------------

    def intake_hold(self, mail_from: str, rcpts: Sequence[str]) -> IntakeHold | None:
        """For mail arriving now: an IntakeHold if the worker would only defer it once claimed, else None.

        That is when its sender's mail is held back behind an earlier message waiting for Odoo (per-sender
        order), or when every instance its recipients belong to is down (breaker not closed). The intake then
        spools it `deferred` straight away. Without this, each message arriving during an outage was claimed and
        deferred again at once: two more spool writes per message, competing with the intake's commits
        (bench/intake.py, where Odoo is unreachable: a quarter of the intake's throughput).
        """
        hold = self.holds.get(sender_lane(mail_from, ""))  # a null sender's lane is its own: never held
        if hold is not None and hold.active():
            return IntakeHold(hold.next_attempt_at, hold.reason, (hold.instance,), self.note_waiting)
        names: set[str] = set()
        for rcpt in rcpts:
            inst = self.config.instance_for_domain(rcpt.rpartition("@")[2])
            if inst is None or not self.is_down(inst.name):
                return None
            names.add(inst.name)
        if not names:
            return None
        now = time.time()
        until = max(self.parked_until(now, self.clients[name].breaker.retry_at) for name in names)
        instances = tuple(sorted(names))
        return IntakeHold(until, f"odoo {', '.join(instances)} unavailable (circuit open); spooled to wait for it",
                          instances, self.note_waiting)

    def note_waiting(self, queue_id: str, instances: Iterable[str]) -> None:
        """An entry deferred for these instances: woken with the others when one comes back."""
        for name in instances:
            if name in self.waiting:
                self.waiting[name].add(queue_id)

    def hold_sender(self, lane: str, entry: SpoolEntry, until: float, instance: str) -> None:
        """The entry waits for `instance` until `until`: its sender's later mail waits behind it."""
        hold = self.holds.get(lane)
        if hold is None or hold.queue_id == entry.queue_id or entry.envelope.received_at < hold.received_at:
            self.holds[lane] = SenderHold(entry.queue_id, entry.envelope.received_at, until, instance)

    def release_sender(self, lane: str, queue_id: str) -> None:
        hold = self.holds.get(lane)
        if hold is not None and hold.queue_id == queue_id:
            del self.holds[lane]

    # -- what goes again -------------------------------------------------------------------------------

    def on_closed(self, instance: str) -> list[str]:
        """The instance is back: the first batch to wake (its senders' holds are lifted too)."""
        self.holds = {lane: h for lane, h in self.holds.items() if h.instance != instance}
        return self._first_batch(instance)

    def _first_batch(self, instance: str) -> list[str]:
        waiting = self.waiting.get(instance)
        if not waiting:
            self.proving.pop(instance, None)
            return []
        first = sorted(waiting)[: max(1, self.delivery.concurrency)]  # queue ids sort by arrival
        waiting.difference_update(first)
        self.proving[instance] = set(first)
        return first

    def reached(self, instance: str, queue_id: str) -> list[str]:
        """Odoo answered a delivery of this entry: it is not waiting any more, and if the instance was being
        proven, the rest of its backlog may go (returned, to wake)."""
        self.waiting.get(instance, set()).discard(queue_id)
        if self.proving.pop(instance, None) is None:
            return []
        rest = sorted(self.waiting.get(instance, ()))
        self.waiting[instance] = set()
        return rest

    def finished(self, queue_id: str) -> list[tuple[str, list[str]]]:
        """An entry is done with (delivered, deferred, failed). If it was the last of a first batch and nothing
        proved its instance yet, the next batch goes, unless the instance is down again (its close wakes it)."""
        out = []
        for instance, batch in list(self.proving.items()):
            if queue_id in batch:
                batch.discard(queue_id)
                if not batch:
                    del self.proving[instance]
                    if not self.is_down(instance):
                        out.append((instance, self._first_batch(instance)))
        return [(i, ids) for i, ids in out if ids]

    def adopt(self, entries: Iterable[SpoolEntry]) -> list[tuple[str, list[str]]]:
        """At start: deferred entries (an earlier run's parked mail among them) wait for their instances like
        ours do, and each instance starts as if its breaker had just closed. Returns the first batches."""
        for entry in entries:
            names = {inst.name for r in entry.envelope.rcpt_tos
                     if (inst := self.config.instance_for_domain(r.rpartition("@")[2])) is not None}
            self.note_waiting(entry.queue_id, names)
        return [(name, ids) for name in list(self.waiting) if (ids := self._first_batch(name))]
