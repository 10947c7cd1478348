"""A real Postfix in front of `mailgw serve`, delivering over LMTP on a unix socket exactly as docs/postfix.md says
(contrib/postfix/lmtp.main.cf, lmtp.transport, mailgw.yaml, mailgw.tmpfiles.conf)."""

from __future__ import annotations

import json

import pytest

from tests.system.postfix import CLIENT_ADDRESS, PostfixStack, entries_by_mid, send, wait_entries

pytestmark = pytest.mark.needs_root


def test_every_message_reaches_the_spool_once_with_all_its_recipients(stack: PostfixStack) -> None:
    daemon = stack.build("lmtp.main.cf", "lmtp.transport")
    stack.start()
    aliases = ["inbox", "help", "sales", "a", "b"]
    sent = {}
    for i in range(20):
        rcpts = [f"{aliases[(i + k) % 5]}@example.com" for k in range(1 + i % 3)]
        sent[f"<lmtp-{i}@sender.test>"] = rcpts
        send(stack.postfix.port, "someone@sender.test", rcpts, f"<lmtp-{i}@sender.test>")
    stack.postfix.wait_queue_empty()
    by_mid = entries_by_mid(daemon, len(sent))
    assert sorted(by_mid) == sorted(sent)
    for mid, rcpts in sent.items():
        [entry] = by_mid[mid]  # exactly once
        assert sorted(entry["rcpt_tos"]) == sorted(rcpts) and entry["intake"] == "lmtp"
        assert entry["mail_from"] == "someone@sender.test"
    # XFORWARD: the entry names the client that spoke to Postfix, not Postfix on the socket.
    shown = daemon.cli("queue", "show", "--json", by_mid["<lmtp-0@sender.test>"][0]["queue_id"],
                       "-c", str(daemon.config_path))
    assert shown.returncode == 0, shown.stderr
    client = json.loads(shown.stdout)["client"]
    assert client["addr"] == CLIENT_ADDRESS and client["helo"] == "client.sender.test"
    assert client["proto"] == "ESMTP" and client["source"] == "REMOTE" and client["ident"]
    deliveries = stack.postfix.deliveries()
    assert deliveries and all(d["status"] == "sent" and "mailgw/lmtp.sock" in d["relay"] for d in deliveries)


def test_two_recipients_one_unknown_delivered_once_for_the_other(stack: PostfixStack) -> None:
    daemon = stack.build("lmtp.main.cf", "lmtp.transport")  # no recipient check at the door: LMTP refuses it
    stack.start()
    # The sender is one of our aliases, so Postfix's bounce for the unknown recipient comes back through mailgw too.
    send(stack.postfix.port, "inbox@example.com", ["sales@example.com", "ghost@example.com"], "<two@sender.test>")
    stack.postfix.wait_queue_empty()
    entries = wait_entries(daemon, 2)
    [original] = [e for e in entries if e["message_id"] == "<two@sender.test>"]
    assert original["rcpt_tos"] == ["sales@example.com"]
    [bounce] = [e for e in entries if e["message_id"] != "<two@sender.test>"]
    assert bounce["mail_from"] == "" and bounce["rcpt_tos"] == ["inbox@example.com"]
    outcome = {d["to"]: d for d in stack.postfix.deliveries() if d["to"] != "inbox@example.com"}
    assert outcome["sales@example.com"]["status"] == "sent"
    assert outcome["ghost@example.com"]["status"] == "bounced" and outcome["ghost@example.com"]["dsn"] == "5.1.1"
