"""A real Postfix delivering through `mailgw pipe` exactly as docs/postfix.md says (contrib/postfix/pipe.master.cf,
pipe.main.cf, pipe.transport): run by pipe(8) as an unprivileged user from Postfix's queue directory, several
recipients per message, with the daemon up (hand-over) and down (the command writes the spool)."""

from __future__ import annotations

import pytest

from tests.system.postfix import PostfixStack, entries_by_mid, send

pytestmark = pytest.mark.needs_root


def test_pipe_transport_as_documented(stack: PostfixStack) -> None:
    # A small limit so that Postfix (10 MB by default) accepts a message mailgw then refuses.
    daemon = stack.build("pipe.main.cf", "pipe.transport", "pipe.master.cf", listener={"max_message_size": "100KiB"})
    port = stack.postfix.port
    stack.start()
    sent: dict[str, tuple[str, list[str]]] = {}
    aliases = ["inbox", "help", "sales", "a", "b"]

    def batch(tag: str, n: int) -> None:
        for i in range(n):
            rcpts = [f"{aliases[(i + k) % 5]}@example.com" for k in range(1 + i % 3)]
            sender = "" if i == 0 else "someone@sender.test"  # the null sender of a bounce, too
            mid = f"<{tag}-{i}@sender.test>"
            sent[mid] = (sender, rcpts)
            send(port, sender, rcpts, mid)

    batch("up", 8)  # the daemon runs: the message is handed over on its socket
    stack.postfix.wait_queue_empty()
    assert daemon.proc is not None
    daemon.stop()
    batch("down", 6)  # the daemon is down: `mailgw pipe` opens the spool itself
    stack.postfix.wait_queue_empty()

    by_mid = entries_by_mid(daemon, len(sent))
    assert sorted(by_mid) == sorted(sent)
    for mid, (sender, rcpts) in sent.items():
        [entry] = by_mid[mid]  # exactly once, every recipient of the message
        assert sorted(entry["rcpt_tos"]) == sorted(rcpts) and entry["mail_from"] == sender, entry
        assert entry["intake"] == "pipe"
    handed_over = {e.get("message_id") for e in daemon.events() if e.get("event") == "spool.put"}
    assert handed_over == {mid for mid in sent if mid.startswith("<up-")}
    deliveries = stack.postfix.deliveries()
    assert len(deliveries) == sum(len(r) for _, r in sent.values())
    assert all(d["status"] == "sent" and "mailgw" in d["relay"] for d in deliveries), deliveries
    assert not (stack.postfix.queue / "deferred").exists() or not any((stack.postfix.queue / "deferred").rglob("*"))


def test_oversize_bounces_with_the_reason(stack: PostfixStack) -> None:
    daemon = stack.build("pipe.main.cf", "pipe.transport", "pipe.master.cf", listener={"max_message_size": "100KiB"})
    stack.start()
    # From one of our aliases, so that Postfix's bounce comes back into the spool, where we can read it.
    send(stack.postfix.port, "inbox@example.com", ["sales@example.com"], "<big@sender.test>", body="x" * 300_000)
    stack.postfix.wait_queue_empty()
    by_mid = entries_by_mid(daemon, 1)
    assert "<big@sender.test>" not in by_mid
    [bounced] = [d for d in stack.postfix.deliveries() if d["to"] == "sales@example.com"]
    assert bounced["status"] == "bounced" and bounced["dsn"] == "5.3.4", bounced
    assert "message too big" in bounced["text"] and "102400" in bounced["text"]
    [[dsn]] = by_mid.values()
    assert dsn["mail_from"] == "" and dsn["rcpt_tos"] == ["inbox@example.com"]
