"""Per-instance circuit breaker: after N consecutive transient failures, stop calling a dead Odoo.

closed --N failures--> open --cooldown--> half_open (one probe) --ok--> closed
                        ^                        |
                        +-------- probe fails ---+

While open, calls fail at once with `BreakerOpenError` (no socket touched), so a backlog of deferred mail
does not hammer an Odoo that is restarting. The probe is a cheap idempotent call run by the client, never
a real message: mail goes again only once the probe succeeded, and then in arrival order (the worker
wakes its deferred entries on the close notification).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from gateway.errors import TempFailure

BreakerState = Literal["closed", "open", "half_open"]


class BreakerOpenError(TempFailure):
    """The instance's breaker is open; `retry_at` (epoch seconds) is when the next probe may run."""

    def __init__(self, instance: str, retry_at: float, last_error: str):
        super().__init__(f"odoo {instance}: circuit open after repeated failures ({last_error})")
        self.retry_at = retry_at


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int, cooldown: float,
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.threshold = max(1, threshold)
        self.cooldown = cooldown
        self._clock = clock
        self.state: BreakerState = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.last_error = ""
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """`listener(new_state)` is called on every state change."""
        self._listeners.append(listener)

    @property
    def retry_at(self) -> float:
        return self.opened_at + self.cooldown if self.state != "closed" else self._clock()

    def check(self) -> None:
        """Raise BreakerOpenError unless calls may go through (half_open admits only the probe)."""
        if self.state != "closed":
            raise BreakerOpenError(self.name, self.retry_at, self.last_error)

    def probe_due(self) -> bool:
        return self.state == "open" and self._clock() >= self.opened_at + self.cooldown

    def begin_probe(self) -> None:
        self._set("half_open")

    def record_success(self) -> None:
        self.failures = 0
        if self.state != "closed":
            self._set("closed")

    def record_failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.opened_at = self._clock()
            self._set("open")

    def _set(self, state: BreakerState) -> None:
        if state == self.state:
            return
        self.state = state
        for listener in list(self._listeners):
            listener(state)
