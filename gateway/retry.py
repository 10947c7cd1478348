"""Retry timing shared by the workers: exponential backoff with "equal jitter" (half fixed, half random)."""

from __future__ import annotations

import random


def backoff_delay(attempts: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempts + 1`: initial, 2x, 4x … capped at maximum; the upper half is random so
    a burst of failures does not come back as a burst."""
    base = min(maximum, initial * (2 ** min(max(attempts, 1) - 1, 30)))
    return base / 2 + (rng or random).uniform(0, base / 2)
