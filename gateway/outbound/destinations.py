"""Per-destination limits: how many SMTP sessions and how many messages per second one receiving system gets,
and how a "slow down" reply (421, 4.7.x) lowers them for a while.

A destination is a provider (every domain whose MX is Google's shares the `google` limits, as Google counts
per sending IP, not per recipient domain), the relay, or else the recipient domain itself. The limits start
from the configuration (built-in defaults below for the big providers) and adapt like TCP's congestion
window (AIMD): a throttling reply multiplies the rate by `throttle.decrease`, halves the sessions and pauses
new sessions for `throttle.pause`; every quiet minute then gives back `throttle.increase` of that rate and
one session, so the destination is probed again slowly instead of at the speed that just failed.
Messages never fail because of this: they wait (in memory for short waits, in the spool otherwise).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.config import DestinationConfig, OutboundConfig, ThrottleConfig
from gateway.logs import get_logger

log = get_logger("mailgw.outbound")

# Starting points, not published figures: Google, Microsoft and Yahoo publish no numbers, throttle per sending
# IP and reputation, and say "slow down" with 421/4.7.x when a sender goes too fast; the adaptive limit takes
# it from there. An entry of the same name under outbound.destinations changes the keys it sets.
BUILTIN_DESTINATIONS: Mapping[str, DestinationConfig] = {
    "google": DestinationConfig(domains=["gmail.com", "googlemail.com"], mx=["google.com", "googlemail.com"],
                                concurrency=5, rate=20.0),
    "microsoft": DestinationConfig(
        domains=["outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de",
                 "hotmail.it", "hotmail.es", "live.fr", "live.de", "live.co.uk", "outlook.fr", "outlook.de"],
        mx=["protection.outlook.com", "outlook.com", "hotmail.com"], concurrency=5, rate=10.0),
    "yahoo": DestinationConfig(
        domains=["yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de",
                 "yahoo.it", "yahoo.es", "yahoo.co.jp", "aim.com"],
        mx=["yahoodns.net"], concurrency=5, rate=10.0),
    "default": DestinationConfig(concurrency=10),
}
MAX_PACE_WAIT = 10.0  # longer than this and the message goes back to the spool until the destination is ready
SLOT_WAIT = 10.0  # how long a delivery waits for one of the destination's sessions before going back
_MAX_DESTINATIONS = 10_000  # per-domain destinations kept; idle ones are dropped beyond this


@dataclass(frozen=True, slots=True)
class Limits:
    concurrency: int
    rate: float | None


class Destination:
    """The live limits of one destination. Single event loop; `clock` is wall-clock seconds."""

    def __init__(self, name: str, limits: Limits, throttle: ThrottleConfig, clock: Callable[[], float] = time.time):
        self.name = name
        self.limits = limits
        self.throttle_cfg = throttle
        self.clock = clock
        self.rate: float | None = limits.rate  # current messages/s (None: no limit)
        self.concurrency = limits.concurrency
        self.paused_until = 0.0
        self.in_use = 0
        self.throttles = 0
        self.delivered = 0
        self._tokens = 1.0
        self._stamp = clock()
        self._base = 0.0  # the rate right after the last throttling reply: what recovery adds fractions of
        self._last_throttle = 0.0
        self._grown_at = 0.0
        self._session_credit = 0.0
        self._recent: deque[float] = deque(maxlen=200)  # delivery times: the rate we had when throttled
        self._cond = asyncio.Condition()

    # -- sessions --------------------------------------------------------------------------------------------

    async def acquire(self, timeout: float = SLOT_WAIT) -> bool:
        """One of the destination's sessions; False when none frees up in time."""
        async with self._cond:
            try:
                async with asyncio.timeout(timeout):
                    await self._cond.wait_for(lambda: self.in_use < self.concurrency)
            except TimeoutError:
                return False
            self.in_use += 1
            return True

    async def release(self) -> None:
        async with self._cond:
            self.in_use -= 1
            self._cond.notify_all()

    # -- pace ------------------------------------------------------------------------------------------------

    def wait_time(self) -> float:
        """Seconds until the next message may go (0: now)."""
        now = self.clock()
        if now < self.paused_until:
            return self.paused_until - now
        if self.rate is None:
            return 0.0
        self._recover()
        if self.rate is None:
            return 0.0
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self) -> None:
        """A message goes now (after `wait_time()` said so, or after waiting that long)."""
        if self.rate is not None:
            self._refill(self.clock())
            self._tokens -= 1.0

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        burst = max(1.0, self.rate)  # at most one second's worth at once
        self._tokens = min(burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def resume_at(self) -> float:
        return self.clock() + self.wait_time()

    # -- feedback --------------------------------------------------------------------------------------------

    def delivered_one(self) -> None:
        self.delivered += 1
        self._recent.append(self.clock())
        self._recover()

    def _recover(self) -> None:
        """Additive increase with time: `increase` of the throttled rate and one session per quiet minute."""
        now = self.clock()
        if self._last_throttle == 0.0 or now < self.paused_until:
            return
        minutes = (now - self._grown_at) / 60.0
        self._grown_at = now
        if self.rate is not None:
            grown = self.rate + self.throttle_cfg.increase * self._base * minutes
            self.rate = grown if self.limits.rate is None else min(self.limits.rate, grown)
            if self.limits.rate is None and now - self._last_throttle >= self.throttle_cfg.forget:
                self.rate = None  # long quiet: back to no limit
                log.info("outbound.destination_recovered", destination=self.name)
        self._session_credit += minutes
        while self._session_credit >= 1.0 and self.concurrency < self.limits.concurrency:
            self.concurrency += 1
            self._session_credit -= 1.0

    def throttled(self, reply: str) -> None:
        """A 421 / 4.7.x "slow down": multiplicative decrease, once per pause (parallel sessions hear it too)."""
        now = self.clock()
        if now - self._last_throttle < self.throttle_cfg.pause / 2:
            self.paused_until = max(self.paused_until, now + self.throttle_cfg.pause)
            return
        self._last_throttle = self._grown_at = now
        self.throttles += 1
        before = self.rate if self.rate is not None else self._observed_rate(now)
        self.rate = self._base = max(self.throttle_cfg.min_rate, before * self.throttle_cfg.decrease)
        self._tokens = 0.0
        self._stamp = now
        self.concurrency = max(1, self.concurrency // 2)
        self._session_credit = 0.0
        self.paused_until = now + self.throttle_cfg.pause
        log.warning("outbound.destination_throttled", destination=self.name, reply=reply[:200],
                    rate=round(self.rate, 3), concurrency=self.concurrency, pause=self.throttle_cfg.pause)

    def _observed_rate(self, now: float) -> float:
        """Messages per second delivered recently (what the destination just found too fast)."""
        recent = [t for t in self._recent if now - t <= 60.0]
        if len(recent) < 2:
            return max(self.throttle_cfg.min_rate, float(len(recent)))
        return len(recent) / max(now - recent[0], 1.0)

    def snapshot(self) -> dict[str, object]:
        return {"destination": self.name, "rate": self.rate, "concurrency": self.concurrency,
                "in_use": self.in_use, "paused_for": max(0.0, self.paused_until - self.clock()),
                "throttles": self.throttles, "delivered": self.delivered}


class Destinations:
    """Maps a recipient domain (and its MX hosts) to its Destination."""

    def __init__(self, cfg: OutboundConfig, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.clock = clock
        self.policies: dict[str, DestinationConfig] = dict(BUILTIN_DESTINATIONS)
        for name, given in cfg.destinations.items():  # a configured entry changes the keys it sets
            base = self.policies.get(name)
            self.policies[name] = (base.model_copy(update={k: getattr(given, k) for k in given.model_fields_set})
                                   if base is not None else given)
        self._by_domain = {d.lower().rstrip("."): name for name, p in self.policies.items() for d in p.domains}
        self._mx_suffixes = [(s.lower().strip("."), name) for name, p in self.policies.items() for s in p.mx]
        self._live: dict[str, Destination] = {}

    def relay(self) -> Destination:
        relay = self.cfg.relay
        assert relay is not None
        return self._get("relay", Limits(relay.concurrency, relay.rate))

    def name_for(self, domain: str, mx_hosts: Sequence[str] = ()) -> str:
        domain = domain.lower().rstrip(".")
        name = self._by_domain.get(domain)
        if name is None:
            for host in mx_hosts:
                host = host.lower().rstrip(".")
                name = next((n for s, n in self._mx_suffixes if host == s or host.endswith("." + s)), None)
                if name is not None:
                    break
        return name or f"domain:{domain}"

    def for_domain(self, domain: str, mx_hosts: Sequence[str] = ()) -> Destination:
        name = self.name_for(domain, mx_hosts)
        policy = self.policies.get(name) or self.policies["default"]
        return self._get(name, Limits(policy.concurrency, policy.rate))

    def waiting(self, domain: str) -> float | None:
        """When a known destination of `domain` takes mail again, if that is further than an in-memory wait
        (the relay, or the domain's provider or itself by name; one recognised only by its MX is not looked up)."""
        name = "relay" if self.cfg.relay is not None else self.name_for(domain)
        dest = self._live.get(name)
        if dest is None or dest.wait_time() <= MAX_PACE_WAIT:
            return None
        return dest.resume_at()

    def _get(self, name: str, limits: Limits) -> Destination:
        dest = self._live.get(name)
        if dest is None:
            if len(self._live) >= _MAX_DESTINATIONS:
                self._forget_idle()
            dest = self._live[name] = Destination(name, limits, self.cfg.throttle, self.clock)
        return dest

    def _forget_idle(self) -> None:
        now = self.clock()
        for name, dest in list(self._live.items()):
            if dest.in_use == 0 and dest.paused_until < now and dest.rate == dest.limits.rate:
                del self._live[name]

    def snapshot(self) -> list[dict[str, object]]:
        return [d.snapshot() for d in self._live.values()]
