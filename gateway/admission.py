"""Who may give us mail for whom: the RCPT-time decision the listeners ask for.

The gateway is never an open relay: a recipient whose domain belongs to no configured Odoo instance is
refused with 550 5.7.1 before anything else is looked at. Inside our domains the router's address-only
rules decide (unknown alias 550 5.1.1, no directory yet 451 4.3.0) once a router is attached.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import Config

# (recipient, sender) -> None to accept, else the SMTP reply line.
Precheck = Callable[[str, str], str | None]


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().strip(">").lower().rstrip(".")


class AdmissionPolicy:
    """Relay protection first, then the router's precheck (swappable at runtime, e.g. on directory refresh)."""

    def __init__(self, config: Config, precheck: Precheck | None = None):
        self.domains = set(config.domain_owner)
        self.precheck = precheck

    def check_rcpt(self, rcpt: str, sender: str, peer: str) -> str | None:
        if "@" not in rcpt or domain_of(rcpt) not in self.domains:
            return "550 5.7.1 Relaying denied: this gateway only accepts mail for its own domains"
        if self.precheck is not None:
            return self.precheck(rcpt, sender)
        return None

    @staticmethod
    def submission_check(auth_configured: bool) -> Callable[[str, str, str], str | None]:
        """Submission relays Odoo's mail to anyone, so it needs AUTH (aiosmtpd refuses RCPT before it) or,
        without AUTH configured, a loopback peer (Odoo on the same host)."""

        def check(rcpt: str, sender: str, peer: str) -> str | None:
            if "@" not in rcpt:
                return "501 5.1.3 Bad recipient address syntax"
            if not auth_configured and not is_loopback_peer(peer):
                return "550 5.7.1 Relaying denied: submission without AUTH is only open to loopback clients"
            return None

        return check


def is_loopback_peer(peer: str) -> bool:
    host = peer.rpartition(":")[0] if peer.count(":") == 1 else peer.rsplit(":", 1)[0]
    host = host.strip("[]")
    return host.startswith("127.") or host in ("::1", "unix", "") or peer == "unix"
