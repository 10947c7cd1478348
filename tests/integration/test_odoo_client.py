"""OdooClient against the stand-in Odoo (a real HTTP server), over both APIs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import OdooConfig
from gateway.errors import TempFailure
from gateway.odoo.breaker import BreakerOpenError
from gateway.odoo.client import (
    NoRouteError,
    OdooClient,
    OdooConfigError,
    OdooRefusedError,
    OdooTempError,
    ProcessResult,
)
from gateway.odoo.transport import TransportError
from tests.odoo_standin import OdooStandin, odoo_instance_config

APIS = ["xmlrpc", "json2"]


def msg(mid: str = "<m1@example.org>", to: str = "sales@example.com", body: bytes = b"hello\r\n") -> bytes:
    return (f"From: Ann <ann@example.org>\r\nTo: {to}\r\nSubject: hi\r\nMessage-Id: {mid}\r\n\r\n").encode() + body


def make_client(standin: OdooStandin, tmp_path: Path, api: str, **extra: Any) -> OdooClient:
    threshold = extra.pop("breaker_threshold", 5)
    cooldown = extra.pop("breaker_cooldown", 30.0)
    cfg = OdooConfig.model_validate(odoo_instance_config(standin, tmp_path, api=api, **extra))
    return OdooClient(cfg, breaker_threshold=threshold, breaker_cooldown=cooldown)


@pytest.fixture(params=APIS)
async def client(request: pytest.FixtureRequest, odoo_standin: OdooStandin, tmp_path: Path
                 ) -> AsyncIterator[OdooClient]:
    c = make_client(odoo_standin, tmp_path, request.param, timeout="2s")
    assert await c.start()
    yield c
    await c.close()


async def test_start_reads_version_and_authenticates(client: OdooClient, odoo_standin: OdooStandin) -> None:
    assert client.server_version["server_version"] == "19.0"
    assert client.major_version == 19
    calls = odoo_standin.calls
    if client.api == "xmlrpc":
        assert [(c.service, c.method) for c in calls[:2]] == [("common", "version"), ("common", "authenticate")]
        assert calls[1].args[:3] == ["odoo", "mailgw", "secret"]
    else:
        auth = calls[-1]
        assert auth.api == "json2" and auth.model == "res.users" and auth.method == "search_read"
        assert auth.headers["authorization"] == "bearer standin-api-key"
        assert auth.headers["x-odoo-database"] == "odoo"


async def test_message_process_results(client: OdooClient, odoo_standin: OdooStandin) -> None:
    first = await client.message_process(msg())
    assert first.outcome == "posted" and first.record_id
    # Same Message-Id again: Odoo's duplicate check answers False.
    assert await client.message_process(msg()) == ProcessResult("false")
    # Loop guard: XML-RPC cannot marshal None (fault 1 after commit), JSON-2 says null. Both: dropped.
    odoo_standin.script.append("none")
    assert (await client.message_process(msg("<m2@example.org>"))).outcome == "dropped"
    last = odoo_standin.message_calls()[-1]
    assert last.outcome == "none"
    with pytest.raises(NoRouteError, match="No possible route"):
        await client.message_process(msg("<m3@example.org>", to="nobody@example.com"))
    odoo_standin.script.append("validation")
    with pytest.raises(OdooRefusedError) as refused:
        await client.message_process(msg("<m4@example.org>"))
    assert refused.value.sender_notified
    odoo_standin.script.append("access")
    with pytest.raises(OdooConfigError) as denied:
        await client.message_process(msg("<m5@example.org>"))
    assert denied.value.kind == "rights"
    odoo_standin.script.append("serialization")
    with pytest.raises(OdooTempError) as busy:
        await client.message_process(msg("<m6@example.org>"))
    assert busy.value.kind == "serialization"


async def test_json2_sends_named_arguments_only(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    c = make_client(odoo_standin, tmp_path, "json2")
    await c.message_process(msg(), model="crm.lead", thread_id=42)
    call = odoo_standin.message_calls()[-1]
    # The body is one JSON object of named arguments; there is no positional form.
    assert call.api == "json2" and call.message is not None
    assert call.kwargs == {"model": "crm.lead", "message": call.message.decode(), "thread_id": 42}
    assert call.message_type == "str"
    await c.close()


async def test_xmlrpc_sends_binary_positional(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    c = make_client(odoo_standin, tmp_path, "xmlrpc")
    await c.message_process(msg())
    call = odoo_standin.message_calls()[-1]
    assert call.message_type == "binary" and call.args[0] is False and call.message == msg()
    await c.close()


@pytest.mark.parametrize("api", APIS)
async def test_bad_credentials_and_database_are_config_problems(odoo_standin: OdooStandin, tmp_path: Path,
                                                                api: str) -> None:
    c = make_client(odoo_standin, tmp_path, api)
    odoo_standin.password, odoo_standin.api_key = "other", "other-key"  # the key was revoked
    assert not await c.start()
    with pytest.raises(OdooConfigError) as info:
        await c.message_process(msg())
    assert info.value.kind == "auth" and c.outage == "auth"
    await c.close()
    odoo_standin.password, odoo_standin.api_key = "secret", "standin-api-key"
    c = make_client(odoo_standin, tmp_path, api, database="nodb")
    with pytest.raises(OdooConfigError) as info:
        await c.message_process(msg())
    assert info.value.kind == "database"
    await c.close()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("behaviour", ["503", "429", "500", "reset", "hang", "down"])
async def test_transient_failures(odoo_standin: OdooStandin, tmp_path: Path, api: str, behaviour: str) -> None:
    c = make_client(odoo_standin, tmp_path, api, timeout="0.3s")
    assert await c.start()
    if behaviour == "down":
        odoo_standin.down()
    else:
        odoo_standin.set_behaviour(behaviour)
    with pytest.raises(TempFailure) as info:
        await c.message_process(msg())
    err = info.value
    if behaviour == "hang":
        assert isinstance(err, TransportError) and err.kind == "timeout"
    elif behaviour in ("reset", "down"):
        assert isinstance(err, TransportError)
    else:
        assert isinstance(err, OdooTempError) and err.kind in ("http", "server_error")
    odoo_standin.set_behaviour("ok")
    odoo_standin.up()
    assert (await c.message_process(msg())).outcome == "posted"
    assert c.outage is None
    await c.close()


async def test_keep_alive_and_concurrency_bound(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    c = make_client(odoo_standin, tmp_path, "xmlrpc", max_concurrency=2)
    await c.start()
    for i in range(20):
        await c.message_process(msg(f"<k{i}@example.org>"))
    assert odoo_standin.connections_opened == 1  # one socket for version, authenticate and 20 calls
    odoo_standin.latency = 0.05
    results = await asyncio.gather(*(c.message_process(msg(f"<c{i}@example.org>")) for i in range(8)))
    assert all(r.outcome == "posted" for r in results)
    assert odoo_standin.max_in_flight == 2
    await c.close()


async def test_breaker_stops_calls_then_probe_closes_it(odoo_standin: OdooStandin, tmp_path: Path) -> None:
    c = make_client(odoo_standin, tmp_path, "xmlrpc", breaker_threshold=2, breaker_cooldown=0.2)
    await c.start()
    odoo_standin.set_behaviour("503")
    for _ in range(2):
        with pytest.raises(OdooTempError):
            await c.message_process(msg())
    seen = len(odoo_standin.calls)
    with pytest.raises(BreakerOpenError):
        await c.message_process(msg())
    assert len(odoo_standin.calls) == seen  # refused locally: Odoo was not called
    odoo_standin.set_behaviour("ok")
    for _ in range(100):
        if c.breaker.state == "closed":
            break
        await asyncio.sleep(0.02)
    assert c.breaker.state == "closed"
    probes = [x for x in odoo_standin.calls[seen:] if x.method != "message_process"]
    assert probes and all(x.method in ("authenticate", "version") for x in probes)
    assert (await c.message_process(msg())).outcome == "posted"
    await c.close()


async def test_find_message_is_cached(client: OdooClient, odoo_standin: OdooStandin) -> None:
    odoo_standin.add_message("<known@example.com>", "crm.lead", 12)
    row = await client.find_message(["<other@x>", "<known@example.com>"])
    assert row is not None and row["model"] == "crm.lead" and row["res_id"] == 12
    n = len(odoo_standin.calls)
    assert await client.find_message(["<other@x>", "<known@example.com>"]) == row
    assert len(odoo_standin.calls) == n
    assert await client.find_message(["<unknown@x>"]) is None


async def test_find_record(client: OdooClient, odoo_standin: OdooStandin) -> None:
    odoo_standin.db["res.partner"].append({"id": 55, "name": "SO042", "email": "x@y"})
    assert await client.find_record("res.partner", "name", "SO042") == 55
    assert await client.find_record("res.partner", "name", "SO043") is None


# -- the bytes Odoo receives -----------------------------------------------------------------------------

EIGHT_BIT = (b"From: J\xf6rg <j@example.org>\r\nTo: sales@example.com\r\nSubject: Gr\xfc\xdfe\r\n"
             b"Message-Id: <8bit@example.org>\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
             b"Content-Transfer-Encoding: 8bit\r\n\r\nK\xf6ln \xe9t\xe9 \x80\xff\r\n")


def big_message(size: int = 20 * 1024 * 1024) -> bytes:
    import base64

    payload = os.urandom(size)
    b64 = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (b"From: ann@example.org\r\nTo: sales@example.com\r\nSubject: big\r\nMessage-Id: <big@example.org>\r\n"
            b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            b"Content-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n--b\r\n"
            b'Content-Type: application/octet-stream; name="blob.bin"\r\nContent-Transfer-Encoding: base64\r\n'
            b'Content-Disposition: attachment; filename="blob.bin"\r\n\r\n' + b64 + b"--b--\r\n")


@pytest.mark.parametrize("api", APIS)
async def test_bytes_arrive_intact(odoo_standin: OdooStandin, tmp_path: Path, api: str) -> None:
    c = make_client(odoo_standin, tmp_path, api, timeout="60s")
    big = big_message()
    for raw in (EIGHT_BIT, big):
        await c.message_process(raw)
        got = odoo_standin.message_calls()[-1].message
        assert got is not None
        if api == "xmlrpc" or raw is big:
            assert got == raw  # Binary (or a UTF-8 text over JSON-2): byte for byte
        else:
            # JSON-2 cannot carry 8-bit non-UTF-8 bytes: re-encoded, and every decoded byte survives.
            a = email.message_from_bytes(raw, policy=email.policy.SMTP)
            b = email.message_from_bytes(got, policy=email.policy.SMTP)
            assert a.get_payload(decode=True) == b.get_payload(decode=True) == b"K\xf6ln \xe9t\xe9 \x80\xff\r\n"
            for name in ("From", "Subject"):
                assert str(a[name]).encode("utf-8", "surrogateescape") == \
                    str(b[name]).encode("utf-8", "surrogateescape")
    await c.close()
