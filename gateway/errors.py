"""The two failure kinds workers act on. Adapters raise them; workers decide (design: Errors)."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of mailgw's own errors."""


class TempFailure(GatewayError):
    """Transient: try again later (connection refused, timeout, HTTP 5xx/429, database busy)."""


class PermFailure(GatewayError):
    """Permanent: retrying will not help (no route, message refused). The entry fails and a DSN goes out."""


class ConfigProblem(TempFailure):
    """Odoo refused our credentials or database: an operator must act. Mail waits; it is never bounced."""
