"""What one delivery attempt says about each recipient, and the transactions it is made of.

Results are classified the way the outbound worker acts on them: 2xx delivered, 4xx and every connection
problem temporary (retry later), 5xx permanent (the sender gets a DSN). A temporary result marked `throttled`
is the destination asking us to slow down (421, 4.7.x): it is retried as soon as the destination's rate allows,
without counting an attempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["delivered", "temporary", "permanent"]

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
# Said by providers that rate-limit without an enhanced code of class 4.7 (Yahoo's TSS04 comes with 421 anyway).
_SLOW_DOWN = re.compile(r"rate.?limit|too many (?:messages|connections|mails|emails)|throttl|slow down", re.I)


@dataclass(frozen=True, slots=True)
class RcptResult:
    outcome: Outcome
    code: int
    text: str
    throttled: bool = False
    retry_at: float = 0.0  # throttled: when the destination takes mail again (wall clock)

    @property
    def status(self) -> str:
        """Enhanced status code from the reply text, or one derived from the reply code."""
        head = self.text.split(" ", 1)[0]
        if _ENHANCED.match(head):
            return head
        return {"delivered": "2.0.0", "temporary": "4.0.0", "permanent": "5.0.0"}[self.outcome]

    @property
    def reply(self) -> str:
        """The reply as the server wrote it, code first (what a DSN's Diagnostic-Code and Odoo show)."""
        return f"{self.code} {self.text}" if not self.text.startswith(str(self.code)) else self.text


def classify(code: int) -> Outcome:
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "permanent"
    return "temporary"


def is_throttling(code: int, text: str) -> bool:
    """421 (the server closes the session, usually because of our volume) or a 4xx reply with a 4.7.x
    enhanced status (Gmail 4.7.28, Microsoft 4.7.650, …) or one that says it rate-limits."""
    if code == 421:
        return True
    if not 400 <= code < 500:
        return False
    head = text.split(" ", 1)[0]
    return head.startswith("4.7.") or bool(_SLOW_DOWN.search(text))


def reply_result(code: int, text: str) -> RcptResult:
    """A result from an SMTP reply (the text without the code)."""
    text = " ".join(text.split())
    return RcptResult(classify(code), code, f"{text}" if text else str(code),
                      throttled=is_throttling(code, text))


@dataclass(frozen=True, slots=True)
class Transaction:
    """One MAIL FROM with its recipients (VERP gives each recipient its own)."""

    mail_from: str
    rcpts: tuple[str, ...]


def temporary(rcpts: tuple[str, ...] | list[str], text: str, *, code: int = 451, throttled: bool = False,
              retry_at: float = 0.0) -> dict[str, RcptResult]:
    return {r: RcptResult("temporary", code, text, throttled=throttled, retry_at=retry_at) for r in rcpts}


def permanent(rcpts: tuple[str, ...] | list[str], text: str, *, code: int = 550) -> dict[str, RcptResult]:
    return {r: RcptResult("permanent", code, text) for r in rcpts}
