"""The Postfix policy listener on a real socket, speaking SMTPD_POLICY_README's protocol (Postfix itself asks it in
tests/system/test_postfix_door.py)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from gateway.admission import AdmissionPolicy
from gateway.config import ListenerConfig, parse_config
from gateway.intake.policy import PolicyListener, decide

CONFIG = parse_config({"odoo": [{"name": "main", "url": "http://127.0.0.1:9", "database": "odoo",
                                 "password_env": "X", "domains": ["example.com"]}]})


def precheck(rcpt: str, sender: str) -> str | None:
    if sender == "looping@example.org":
        return "451 4.7.1 Too many messages from this sender, try again later"
    return None if rcpt.startswith("sales@") else "550 5.1.1 No such recipient here"


def request(**attrs: str) -> dict[str, str]:
    return {"request": "smtpd_access_policy", "protocol_state": "RCPT", "sender": "s@example.org", **attrs}


def test_decisions() -> None:
    admission = AdmissionPolicy(CONFIG, precheck)
    assert decide(request(recipient="sales@example.com"), admission) == "DUNNO"
    assert decide(request(recipient="nobody@Example.COM"), admission) == "550 5.1.1 No such recipient here"
    assert decide(request(recipient="sales@example.com", sender="looping@example.org"), admission).startswith("451")
    # Not our domain, or not a RCPT request: no opinion; Postfix's relay rules decide.
    assert decide(request(recipient="x@elsewhere.test"), admission) == "DUNNO"
    assert decide(request(recipient="nobody@example.com", protocol_state="DATA"), admission) == "DUNNO"
    assert decide({"recipient": "nobody@example.com"}, admission) == "DUNNO"
    no_directory = AdmissionPolicy(CONFIG, lambda r, s: "451 4.3.0 Recipient directory unavailable, try again later")
    assert decide(request(recipient="sales@example.com"), no_directory).startswith("451 4.3.0")


async def test_one_connection_many_requests(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    cfg = ListenerConfig.model_validate({"kind": "policy", "bind": f"unix:{path}", "socket_mode": 0o600})
    listener = PolicyListener(cfg, AdmissionPolicy(CONFIG, precheck))
    await listener.start()
    try:
        def client() -> bytes:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(str(path))
            # Postfix pipelines nothing, but keeps the connection: three requests, one at a time.
            answers = b""
            for rcpt in ("sales@example.com", "ghost@example.com", "x@elsewhere.test"):
                s.sendall(f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
                          f"client_address=192.0.2.1\nhelo_name=h\nsender=s@example.org\nrecipient={rcpt}\n"
                          f"instance=abc.1\nunknown_future_attribute=x\n\n".encode())
                while not answers.endswith(b"\n\n"):
                    answers += s.recv(4096)
                answers += b"|"
            s.close()
            return answers

        assert await asyncio.to_thread(client) == (
            b"action=DUNNO\n\n|action=550 5.1.1 No such recipient here\n\n|action=DUNNO\n\n|")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        await listener.drain(1)
    assert not path.exists()
