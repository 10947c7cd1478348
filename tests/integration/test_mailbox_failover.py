"""Two gateways on one PostgreSQL spool, both configured with the same IMAP mailbox on a real Dovecot: exactly
one polls it; when it dies (kill -9: PostgreSQL ends its session and frees the mailbox lock) the other takes over,
and no message is spooled twice."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.config import parse_config
from gateway.intake.imap import ImapPoller
from gateway.spool.postgres import PostgresSpool
from tests.integration.dovecot import DovecotServer, mailbox_config_dict, message
from tests.system.daemon import DaemonProcess, base_config
from tests.waiting import wait_until


async def test_one_gateway_polls_and_the_other_takes_over_when_it_dies(dovecot: DovecotServer, tmp_path: Path,
                                                                       pg_spool: dict[str, str]) -> None:
    user = dovecot.add_user()
    for i in range(5):
        await asyncio.to_thread(dovecot.append, user, message(i))
    mailbox = mailbox_config_dict(dovecot, user, tmp_path / "state")
    secret = tmp_path / "spool.dsn"
    secret.write_text(pg_spool["dsn"])
    spool_cfg = {"backend": "postgres", "dsn_file": str(secret), "schema": pg_spool["schema"], "instance": "gw1"}
    # The dying gateway only polls (no Odoo configured: nothing is delivered, the spool keeps what was fetched).
    box = {k: v for k, v in mailbox["imap"][0].items() if k != "instance"}  # type: ignore[index]
    first = DaemonProcess(tmp_path, base_config(tmp_path, imap=[box], spool=spool_cfg, odoo=[]))
    second_spool = await PostgresSpool.open(pg_spool["dsn"], schema=pg_spool["schema"], instance="gw2", daemon=True)
    config = parse_config(mailbox)
    second = ImapPoller(config.imap[0], config, second_spool)
    second.backoff_initial = second.standby_retry = 0.2
    task: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(first.start)

        async def spooled() -> int:
            return len(await second_spool.list())

        async def first_five() -> bool:
            return await spooled() == 5

        await wait_until(first_five, what="the first gateway's 5 messages")
        task = asyncio.create_task(second.run())
        await asyncio.sleep(1.0)  # several standby retries
        assert second.stats["sessions"] == 0  # it never even logged in: the first gateway holds the mailbox
        await asyncio.to_thread(first.kill9)
        for i in range(5, 8):
            await asyncio.to_thread(dovecot.append, user, message(i))
        await wait_until(lambda: second.stats["flagged"] == 3, what="the second gateway to take over")
        assert await spooled() == 8  # every message once
        assert all("\\Seen" in f for f in dovecot.flags(user).values())
    finally:
        await second.stop()
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        await second_spool.close()
        if first.proc is not None and first.proc.poll() is None:
            first.kill9()
