"""Sender authentication at the door: SPF, DKIM, DMARC and ARC, and the Authentication-Results header.

`Verifier` (verifier.py) runs the checks for one message through the gateway's own async resolver
(resolver.py); policy.py decides what each Odoo instance does with the verdict.
"""

from gateway.auth.verifier import AuthSession, AuthVerdict, Verifier

__all__ = ["AuthSession", "AuthVerdict", "Verifier"]
