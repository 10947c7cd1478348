"""IMAP intake throughput: ImapPoller (fetch -> durable spool commit -> \\Seen) beside a bare imaplib FETCH.

    .venv/bin/python bench/imap.py [--messages 2000] [--size 4096] [--batch 50] [--runs 3] [--log-level info]

One private Dovecot (tests/integration/dovecot.py), implicit TLS on 127.0.0.1. Each run gets a fresh mailbox
preloaded with N messages (written into Maildir/new, then indexed by one warm-up SELECT), then measures,
connect + login + select included:
  imaplib-bare     Python's imaplib, one `UID FETCH 1:* (BODY.PEEK[])`: the bytes, stored nowhere (reference)
  imaplib-chunked  the same in UID chunks of --batch (what a bounded-memory client does), for context
  mailgw           ImapPoller with after: seen into a SqliteSpool on disk (synchronous=FULL): each batch is
                   fetched, committed (fsync), then flagged \\Seen; the clock stops when the last flag is set
Prints msg/s per run, medians, and mailgw's ratio to imaplib-bare (the issue asks for >= 0.5).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway.config import parse_config  # noqa: E402
from gateway.intake.imap import ImapPoller  # noqa: E402
from gateway.logs import setup_logging  # noqa: E402
from gateway.spool import SqliteSpool  # noqa: E402
from tests.integration.dovecot import (  # noqa: E402
    DovecotServer,
    MailUser,
    mailbox_config_dict,
    message,
    preload_maildir,
    why_unavailable,
)


def imaplib_fetch(server: DovecotServer, user: MailUser, n: int, chunk: int | None) -> float:
    t0 = time.perf_counter()
    conn = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=server.ssl_context())
    conn.login(user.address, user.password)
    conn.select("INBOX")
    got = 0
    ranges = [f"{i}:{min(i + chunk - 1, n)}" for i in range(1, n + 1, chunk)] if chunk else ["1:*"]
    for r in ranges:
        typ, data = conn.uid("FETCH", r, "(BODY.PEEK[])")
        assert typ == "OK", data
        got += sum(1 for item in data if isinstance(item, tuple))
    conn.logout()
    elapsed = time.perf_counter() - t0
    assert got == n, (got, n)
    return elapsed


async def mailgw_poll(server: DovecotServer, user: MailUser, n: int, batch: int, work: Path) -> float:
    config = parse_config(mailbox_config_dict(server, user, work, batch_size=batch))
    spool = await SqliteSpool.open(config.spool_path)
    poller = ImapPoller(config.imap[0], config, spool)
    t0 = time.perf_counter()
    task = asyncio.create_task(poller.run())
    while poller.stats["flagged"] < n:
        if task.done():
            raise RuntimeError(f"poller stopped early: {poller.stats}")
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - t0
    await poller.stop()
    await task
    assert len(await spool.list(limit=n + 10)) == n and poller.stats["fetched"] == n, poller.stats
    await spool.close()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096, help="approximate message size in bytes")
    ap.add_argument("--batch", type=int, default=50, help="ImapPoller batch_size (and imaplib-chunked chunk)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--log-level", default="info", help="mailgw log level; JSON lines go to /dev/null")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    reason = why_unavailable()
    if reason:
        print(f"bench/imap.py: {reason}", file=sys.stderr)
        return 1
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    setup_logging(args.log_level, "json", stream=devnull)
    run = asyncio.run
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            run = uvloop.run  # type: ignore[assignment]
            loop_name = "uvloop"
        except ImportError:
            pass

    server = DovecotServer()
    work = Path(tempfile.mkdtemp(prefix="mailgw-bench-imap-", dir="/var/tmp"))
    server.start()
    n = args.messages
    results: dict[str, list[float]] = {"imaplib-bare": [], "imaplib-chunked": [], "mailgw": []}
    print(f"{n} messages of ~{args.size} B, batch {args.batch}, Dovecot imaps on 127.0.0.1, {loop_name}, "
          f"spool in {work}")
    try:
        raws = [message(i, size=args.size) for i in range(n)]
        for r in range(args.runs):
            user = server.add_user()
            preload_maildir(server, user, raws)
            imaplib_fetch(server, user, n, None)  # warm-up: Dovecot indexes the new mail, page cache is hot
            t_bare = imaplib_fetch(server, user, n, None)
            t_chunk = imaplib_fetch(server, user, n, args.batch)
            t_gw = run(mailgw_poll(server, user, n, args.batch, work / f"run{r}"))
            for name, t in (("imaplib-bare", t_bare), ("imaplib-chunked", t_chunk), ("mailgw", t_gw)):
                results[name].append(n / t)
            print(f"run {r + 1}: imaplib-bare {n / t_bare:7.0f} msg/s   imaplib-chunked {n / t_chunk:7.0f} msg/s   "
                  f"mailgw {n / t_gw:7.0f} msg/s")
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"median: imaplib-bare {med['imaplib-bare']:.0f} msg/s, imaplib-chunked {med['imaplib-chunked']:.0f} "
          f"msg/s, mailgw {med['mailgw']:.0f} msg/s")
    ratio = med["mailgw"] / med["imaplib-bare"]
    print(f"mailgw / imaplib-bare = {ratio:.2f} (target >= 0.50: {'met' if ratio >= 0.5 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
