"""Outbound throughput to Postfix's smtp-sink, beside a bare aiosmtplib sender, in one run.

    .venv/bin/python bench/outbound.py [--messages 2000] [--runs 3] [--size 4096] [--sessions 10]

smtp-sink (`smtp-sink -u nobody 127.0.0.1:PORT 1024`, Postfix's C sink: accepts and discards) is the receiving
side for every variant, which all send one message per transaction over reused connections (`--sessions`
of them), as Odoo's one-recipient-per-transaction mail goes out:
  bare        aiosmtplib only: N connections kept open, MAIL/RCPT/DATA per message, nothing else (the floor)
  mailgw-*    the outbound worker as the daemon runs it: claim from the SQLite spool (WAL, synchronous=FULL),
              read the message, strip Bcc/Return-Path, add Received, DKIM-sign (none / rsa-sha256 2048 /
              ed25519-sha256 / both), send through the relay session pool (RSET before each reuse), commit the
              `sent` transition; logs at info to /dev/null
Each mailgw run spools the messages first (not timed), then times the worker draining them (`--sessions` x 5
deliveries in flight, so that sessions stay busy while others wait for the spool's fsync). Prints msg/s per
run, the median, and the ratio to the bare sender, then the CPU time of DKIM signing alone per message (this
process, one thread: steadier than wall time on a busy machine). Needs smtp-sink (Debian: postfix) and root
for `-u nobody`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository first: bench/routing.py shadows routing/
from bench.common import DEVNULL, SMTP_SINK, free_port, padded, start_sink, wait_port


def message(i: int, size: int) -> bytes:
    head = (f"From: \"Shop\" <notifications@example.com>\r\nTo: customer{i}@remote.test\r\n"
            f"Subject: Your order {i}\r\nDate: Mon, 01 Dec 2025 10:00:00 +0000\r\n"
            f"Message-Id: <{i}.1700000000-openerp-{i}-sale.order@odoo>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    return padded(head, b"Thank you for your order. Here are the details of what you bought and when it ships.\r\n",
                  size)


async def bare(port: int, n: int, size: int, sessions: int) -> float:
    import aiosmtplib

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    bodies = [message(i, size) for i in range(n)]

    async def one_session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench.test")
        await client.connect()
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            await client.sendmail("bounce@example.com", [f"customer{i}@remote.test"], bodies[i])
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(one_session() for _ in range(sessions)))
    return n / (time.perf_counter() - start)


async def mailgw(port: int, n: int, size: int, sessions: int, keys: list[dict[str, str]], tmp: Path) -> float:
    from gateway.config import parse_config
    from gateway.logs import setup_logging
    from gateway.outbound.worker import OutboundWorker
    from gateway.spool import Direction, Envelope, SqliteSpool, State

    setup_logging("info", "json", stream=DEVNULL)
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    cfg = parse_config({
        "state_dir": str(run_dir),
        "delivery": {"poll_interval": "0.01s"},
        "outbound": {"relay": {"host": "127.0.0.1", "port": port, "tls": "none", "concurrency": sessions},
                     "concurrency": sessions * 5, "dkim": keys, "helo_name": "gw.example.com",
                     "sessions": {"max_messages": 1000}},
    })
    spool = await SqliteSpool.open(run_dir / "spool.db")
    try:
        for i in range(n):
            env = Envelope(mail_from="bounce@example.com", rcpt_tos=(f"customer{i}@remote.test",),
                           intake="submission", peer="127.0.0.1", helo="odoo.local")
            await spool.put(env, message(i, size), direction=Direction.OUTBOUND)
        worker = OutboundWorker(cfg, spool, hostname="gw.example.com")
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())
        while True:
            counts = await spool.counts()
            if counts.get(("outbound", "sent"), 0) >= n:
                break
            if counts.get(("outbound", "exception"), 0):
                raise RuntimeError(f"delivery failed: {counts}")
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        await worker.stop()
        task.cancel()
        assert len(await spool.list(state=State.SENT, direction=Direction.OUTBOUND, limit=n + 1)) == n
        return n / elapsed
    finally:
        await spool.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def make_keys(tmp: Path) -> dict[str, list[dict[str, str]]]:
    from gateway.outbound.dkim import generate_key

    paths = {}
    for algorithm, name in (("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")):
        key = generate_key(algorithm)
        path = tmp / f"{algorithm}.key"
        path.write_bytes(key.private)
        paths[name] = {"domain": "example.com", "selector": algorithm, "key_file": str(path), "algorithm": name}
    return {"none": [], "rsa": [paths["rsa-sha256"]], "ed25519": [paths["ed25519-sha256"]],
            "both": [paths["rsa-sha256"], paths["ed25519-sha256"]]}


def signing_cost(keys: dict[str, list[dict[str, str]]], size: int, n: int = 300) -> dict[str, float]:
    """CPU microseconds per message of `DkimSigner.sign` for each key set."""
    from gateway.outbound.dkim import DkimKey, DkimSigner

    messages = [message(i, size) for i in range(n)]
    out = {}
    for name, key_list in keys.items():
        signer = DkimSigner([DkimKey(k["domain"], k["selector"], Path(k["key_file"]).read_bytes(), k["algorithm"])
                             for k in key_list])
        signer.sign(messages[0])  # key parsed and checked once, outside the measure
        start = time.process_time()
        for m in messages:
            signer.sign(m)
        out[name] = (time.process_time() - start) / n * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--sessions", type=int, default=10)
    args = ap.parse_args()
    if not Path(SMTP_SINK).exists():
        print("smtp-sink not found (Debian package postfix)", file=sys.stderr)
        return 1
    port = free_port()
    proc = start_sink(port)
    try:
        wait_port(port, timeout=10)
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            keys = make_keys(tmp)
            results: dict[str, list[float]] = {}
            for _run in range(args.runs):  # interleaved, so machine noise hits every variant alike
                results.setdefault("bare", []).append(asyncio.run(bare(port, args.messages, args.size,
                                                                       args.sessions)))
                for name, key_list in keys.items():
                    rate = asyncio.run(mailgw(port, args.messages, args.size, args.sessions, key_list, tmp))
                    results.setdefault(f"mailgw-{name}", []).append(rate)
            costs = signing_cost(keys, args.size)
    finally:
        proc.terminate()
        proc.wait(5)
    base = statistics.median(results["bare"])
    print(f"{args.messages} messages of {args.size} bytes, {args.sessions} sessions, to smtp-sink; msg/s per run")
    for name, rates in results.items():
        med = statistics.median(rates)
        runs = " ".join(f"{r:8.0f}" for r in rates)
        print(f"{name:<16} {runs}   median {med:8.0f}   {med / base:5.2f}x bare")
    print("DKIM signing alone, CPU per message: " + ", ".join(f"{k} {v:.0f} us" for k, v in costs.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
