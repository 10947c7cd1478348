"""Fault classification (docs/odoo.md §10.7) and the circuit breaker, without sockets."""

from __future__ import annotations

import pytest

from gateway.errors import ConfigProblem, PermFailure, TempFailure
from gateway.odoo.breaker import BreakerOpenError, CircuitBreaker
from gateway.odoo.client import NoRouteError, OdooConfigError, OdooRefusedError, OdooTempError, classify
from gateway.odoo.transport import RpcFault, _xml_fault

TB = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    g()\n"


def xml(code: int, text: str) -> RpcFault:
    import xmlrpc.client

    return _xml_fault(xmlrpc.client.Fault(code, text))


def json2(status: int, name: str = "", message: str = "") -> RpcFault:
    return RpcFault(code=status, http_status=status, name=name, message=message, protocol="json2")


@pytest.mark.parametrize(("fault", "kind", "extra"), [
    (xml(1, TB + "ValueError: No possible route found for incoming message from a to b"), NoRouteError, None),
    (json2(500, "builtins.ValueError", "No possible route found for incoming message"), NoRouteError, None),
    (xml(1, TB + "ValueError: Mailbox unavailable - unknown target model x"), OdooRefusedError, None),
    (xml(2, "The operation cannot be completed"), OdooRefusedError, "notified"),
    (json2(422, "odoo.exceptions.ValidationError", "constraint"), OdooRefusedError, "notified"),
    (xml(3, "Access Denied"), OdooConfigError, "auth"),
    (json2(401, "werkzeug.exceptions.Unauthorized", "Invalid apikey"), OdooConfigError, "auth"),
    (xml(4, "You are not allowed to access"), OdooConfigError, "rights"),
    (json2(403, "odoo.exceptions.AccessError", "Private methods"), OdooConfigError, "rights"),
    (xml(1, TB + 'psycopg2.OperationalError: connection failed: FATAL:  database "nodb" does not exist'),
     OdooConfigError, "database"),
    (xml(1, TB + "psycopg2.errors.SerializationFailure: could not serialize access due to concurrent update"),
     OdooTempError, "serialization"),
    (json2(409, "odoo.exceptions.LockError", "locked"), OdooTempError, "serialization"),
    (json2(503, "", "HTTP 503"), OdooTempError, "http"),
    (json2(429, "", "HTTP 429"), OdooTempError, "http"),
    (RpcFault(code=502, http_status=502, message="HTTP 502", protocol="xmlrpc"), OdooTempError, "http"),
    (json2(404, "werkzeug.exceptions.NotFound", "no such model"), OdooConfigError, "endpoint"),
    (xml(1, TB + "KeyError: 'something odd'"), OdooTempError, "server_error"),
])
def test_classify(fault: RpcFault, kind: type, extra: str | None) -> None:
    err = classify(fault, instance="main", model="mail.thread", method="message_process")
    assert type(err) is kind
    if extra == "notified":
        assert isinstance(err, OdooRefusedError) and err.sender_notified
    elif extra:
        assert getattr(err, "kind", None) == extra


def test_kinds_map_to_worker_decisions() -> None:
    # ConfigProblem is transient for the worker (mail waits) but is never a PermFailure.
    assert issubclass(OdooConfigError, ConfigProblem) and issubclass(OdooConfigError, TempFailure)
    assert issubclass(NoRouteError, PermFailure) and not issubclass(NoRouteError, TempFailure)


def test_xml_fault_one_keeps_last_traceback_line() -> None:
    f = xml(1, TB + "TypeError: cannot marshal None unless allow_none is enabled\n")
    assert f.name == "TypeError" and f.message == "cannot marshal None unless allow_none is enabled"
    assert "Traceback" in f.detail


def test_breaker_opens_probes_and_closes() -> None:
    now = [100.0]
    states: list[str] = []
    b = CircuitBreaker("main", threshold=3, cooldown=10, clock=lambda: now[0])
    b.subscribe(states.append)
    b.check()
    b.record_failure("refused")
    b.record_failure("refused")
    b.record_success()  # a success resets the count
    for _ in range(3):
        b.record_failure("refused")
    assert b.state == "open"
    with pytest.raises(BreakerOpenError) as info:
        b.check()
    assert info.value.retry_at == 110.0
    assert not b.probe_due()
    now[0] = 110.0
    assert b.probe_due()
    b.begin_probe()
    with pytest.raises(BreakerOpenError):
        b.check()  # half open: only the probe goes through
    b.record_failure("still refused")
    assert b.state == "open" and b.retry_at == 120.0
    now[0] = 121.0
    b.begin_probe()
    b.record_success()
    b.check()
    assert states == ["open", "half_open", "open", "half_open", "closed"]
