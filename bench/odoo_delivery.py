"""Delivery throughput from the spool to Odoo, beside a bare XML-RPC client calling the same Odoo, in one run.

    .venv/bin/python bench/odoo_delivery.py [--messages 2000] [--runs 3] [--size 3000] [--json2] [--no-postgres]

Odoo is the stand-in (tests/odoo_standin.py) in its own process, answering `message_process` at once with
an id (no parsing), so both sides measure client cost plus the same server cost:
  bare      xmlrpc.client.ServerProxy (keep-alive http.client), N threads, `execute_kw(... message_process,
            [False, Binary(raw)])` — the floor for one call
  mailgw    the inbound worker: claim from the SQLite spool (WAL, synchronous=FULL), read the raw message,
            route it with the real Router, prepend the delivery headers, call Odoo through OdooClient, commit
            the `delivered` transition
  mailgw-pg the same worker on the PostgreSQL spool (a private server with fsync on, started for the run, on
            this machine), one gateway
  mailgw-pg-x2  two gateways (processes) draining one PostgreSQL spool together, each with the same settings
with 1 and 8 concurrent calls (instance `max_concurrency` = N calls to Odoo at most, per gateway; worker
`delivery.concurrency` = 2N, so the next message is routed and prepared while a call is in flight; mail from
64 senders so per-sender ordering does not serialise the run; logging at the production level `info`, to
/dev/null). Prints msg/s per run and medians, the gateway's overhead per message beyond the bare call,
1/rate(mailgw) - 1/rate(bare) (the issue asks < 1 ms), and the extra CPU per message (the gateway processes' CPU
time, all threads; steadier than wall time on a busy machine; the database's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository first: bench/routing.py shadows routing/
from bench.common import DEVNULL, REPO, padded, pg_spool, start_postgres

STANDIN = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from tests.odoo_standin import OdooStandin
s = OdooStandin()
s.instant = 1
s.record_calls = False
s.start()
print(s.port, flush=True)
sys.stdin.read()
s.stop()
"""
SENDERS = 64


def make_message(i: int, size: int) -> bytes:
    head = (f"From: Sender {i % SENDERS} <sender{i % SENDERS}@example.org>\r\nTo: sales@example.com\r\n"
            f"Subject: benchmark message {i}\r\nMessage-Id: <bench.{i}@example.org>\r\n"
            f"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n").encode()
    return padded(head, b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n", size)


def start_standin() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", STANDIN], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds() -> float:
    """CPU time of this process (all threads): the stand-in runs in its own process and is not counted."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_threads(conc: int, n: int, work: Any) -> tuple[float, float]:
    """`work(thread_index, count)` in `conc` threads started together; (wall, CPU) of the whole."""
    counts = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    barrier = threading.Barrier(conc + 1)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        prepared = work(i)
        barrier.wait()
        try:
            prepared(counts[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(conc)]
    for t in threads:
        t.start()
    barrier.wait()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    if errors:
        raise errors[0]
    return elapsed, cpu


def bare_xmlrpc(url: str, n: int, conc: int, size: int) -> tuple[float, float]:
    uid = xmlrpc.client.ServerProxy(f"{url}/xmlrpc/2/common").authenticate("odoo", "mailgw", "secret", {})

    def work(i: int) -> Any:
        proxy = xmlrpc.client.ServerProxy(f"{url}/xmlrpc/2/object")
        messages = [make_message(i * 100000 + k, size) for k in range(n // conc + 1)]

        def go(count: int) -> None:
            for k in range(count):
                result = proxy.execute_kw("odoo", uid, "secret", "mail.thread", "message_process",
                                          [False, xmlrpc.client.Binary(messages[k])], {})
                assert result == 1
        return go

    return run_threads(conc, n, work)


def bare_json2(url: str, n: int, conc: int, size: int) -> tuple[float, float]:
    host, port = url.rsplit("/", 1)[-1].split(":")
    headers = {"Content-Type": "application/json; charset=utf-8", "Authorization": "bearer standin-api-key",
               "X-Odoo-Database": "odoo"}

    def work(i: int) -> Any:
        conn = http.client.HTTPConnection(host, int(port))
        messages = [make_message(i * 100000 + k, size).decode() for k in range(n // conc + 1)]

        def go(count: int) -> None:
            for k in range(count):
                body = json.dumps({"model": False, "message": messages[k]}).encode()
                conn.request("POST", "/json/2/mail.thread/message_process", body, headers)
                resp = conn.getresponse()
                assert json.loads(resp.read()) == 1
        return go

    return run_threads(conc, n, work)


def gateway_config(url: str, conc: int, api: str, tmp: Path, spool: dict[str, Any] | None = None) -> Any:
    from gateway.config import parse_config

    secret = tmp / "secret"
    secret.write_text("secret" if api == "xmlrpc" else "standin-api-key")
    return parse_config({
        "state_dir": str(tmp),
        "odoo": [{"name": "main", "url": url, "database": "odoo", "login": "mailgw", "password_file": str(secret),
                  "api": api, "domains": ["example.com"], "max_concurrency": conc}],
        "delivery": {"concurrency": 2 * conc, "poll_interval": "0.01s"},
        **({"spool": spool} if spool else {}),
    })


async def preload(spool: Any, n: int, size: int) -> None:
    from gateway.spool import Envelope

    for start in range(0, n, 500):
        await asyncio.gather(*(
            spool.put(Envelope(f"sender{i % SENDERS}@example.org", ("sales@example.com",), "smtp",
                               peer="192.0.2.1", helo="client.example.org"), make_message(i, size),
                      message_id=f"<bench.{i}@example.org>")
            for i in range(start, min(n, start + 500))))


async def start_worker(cfg: Any, spool: Any) -> tuple[Any, dict[str, Any]]:
    from gateway.inbound import InboundWorker, build_clients
    from gateway.odoo.directory import DirectorySync

    clients = build_clients(cfg)
    for c in clients.values():
        await c.start()
    sync = DirectorySync(cfg, clients)
    await sync.refresh()
    return InboundWorker(cfg, spool, clients, sync, hostname="gw.bench"), clients


async def gateway(url: str, n: int, conc: int, size: int, api: str, tmp: Path, pg: dict[str, Any] | None
                  ) -> tuple[float, float]:
    """One gateway in this process: SQLite, or PostgreSQL when `pg` names a spool."""
    from gateway.logs import setup_logging
    from gateway.spool import State, open_spool

    setup_logging("info", "json", stream=DEVNULL)  # production level, to nowhere
    cfg = gateway_config(url, conc, api, tmp, pg)
    spool = await open_spool(cfg, daemon=True)
    await preload(spool, n, size)
    worker, clients = await start_worker(cfg, spool)
    c0, t0 = cpu_seconds(), time.perf_counter()
    task = asyncio.create_task(worker.run())
    while worker.stats["delivered"] < n:
        if worker.stats["failed"] or worker.stats["deferred"]:
            raise RuntimeError(f"delivery trouble: {worker.stats}")
        await asyncio.sleep(0.002)
    await worker.flush()  # every `delivered` transition committed
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    await worker.stop(timeout=5)
    task.cancel()
    counts = await spool.counts()
    assert counts.get(("inbound", str(State.DELIVERED))) == n, counts
    for c in clients.values():
        await c.close()
    await spool.close()
    return elapsed, cpu


async def worker_process(spec: dict[str, Any]) -> None:
    """`--worker SPEC`: one gateway of a multi-gateway run. Prints "ready", starts on a line on stdin, stops on
    the next one, then prints the CPU seconds it used in between."""
    from gateway.logs import setup_logging
    from gateway.spool import open_spool

    setup_logging("info", "json", stream=DEVNULL)
    cfg = gateway_config(spec["url"], spec["conc"], spec["api"], Path(spec["tmp"]), spec["spool"])
    spool = await open_spool(cfg, daemon=True)
    worker, clients = await start_worker(cfg, spool)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    c0 = cpu_seconds()
    task = asyncio.create_task(worker.run())
    await asyncio.to_thread(sys.stdin.readline)
    await worker.flush()
    cpu = cpu_seconds() - c0
    await worker.stop(timeout=5)
    task.cancel()
    for c in clients.values():
        await c.close()
    await spool.close()
    print(f"{cpu:.6f}", flush=True)


async def gateways(url: str, n: int, conc: int, size: int, api: str, tmp: Path, pg: dict[str, Any], count: int
                   ) -> tuple[float, float]:
    """`count` gateway processes draining one PostgreSQL spool; wall time until all is delivered, their CPU."""
    from gateway.spool import State, open_spool

    cfg = gateway_config(url, conc, api, tmp, pg)
    spool = await open_spool(cfg)
    await preload(spool, n, size)
    procs = []
    for i in range(count):
        spec = {"url": url, "conc": conc, "api": api, "tmp": str(tmp), "spool": {**pg, "instance": f"bench{i}"}}
        procs.append(await asyncio.create_subprocess_exec(sys.executable, __file__, "--worker", json.dumps(spec),
                                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    for proc in procs:
        assert proc.stdout is not None and (await proc.stdout.readline()).strip() == b"ready"
    t0 = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
    delivered = str(State.DELIVERED)
    # The gateways are other processes: the spool is the only place that knows how far they got.
    while (await spool.counts()).get(("inbound", delivered), 0) < n:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = 0.0
    for proc in procs:
        out, _ = await asyncio.wait_for(proc.communicate(b"stop\n"), 60)
        cpu += float(out.split()[-1])
    await spool.close()
    return elapsed, cpu


def run_gateway(url: str, n: int, conc: int, size: int, api: str, pg: dict[str, Any] | None = None,
                count: int = 1) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="mailgw-bench-", dir=str(REPO.parent)
                                     if os.access(REPO.parent, os.W_OK) else None) as tmp:
        coro = (gateway(url, n, conc, size, api, Path(tmp), pg) if count == 1 or pg is None
                else gateways(url, n, conc, size, api, Path(tmp), pg, count))
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            return asyncio.run(coro)
        return uvloop.run(coro)


_schemas = itertools.count()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=3000, help="message size in bytes")
    ap.add_argument("--json2", action="store_true", help="also JSON-2: mailgw vs a bare http.client JSON-2 call")
    ap.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL spool runs")
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one gateway of a multi-gateway run
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        try:
            import uvloop
        except ImportError:  # pragma: no cover
            asyncio.run(worker_process(spec))
            return 0
        uvloop.run(worker_process(spec))
        return 0
    cluster = None if args.no_postgres else start_postgres()
    proc, url = start_standin()
    ok = True
    names = ["bare", "mailgw"] + (["mailgw-pg", "mailgw-pg-x2"] if cluster is not None else [])
    try:
        apis = ["xmlrpc", "json2"] if args.json2 else ["xmlrpc"]
        print(f"{args.messages} messages of ~{args.size} B per run, {args.runs} runs, stand-in Odoo at {url}")
        for api in apis:
            bare = bare_xmlrpc if api == "xmlrpc" else bare_json2
            for conc in (1, 8):
                rates: dict[str, list[float]] = {name: [] for name in names}
                cpus: dict[str, list[float]] = {name: [] for name in names}
                for run in range(args.runs):
                    for name in names:
                        if name == "bare":
                            secs, cpu = bare(url, args.messages, conc, args.size)
                        elif name == "mailgw":
                            secs, cpu = run_gateway(url, args.messages, conc, args.size, api)
                        else:
                            with tempfile.TemporaryDirectory() as tmp:
                                pg = pg_spool(cluster, Path(tmp), f"bench_{next(_schemas)}")
                                secs, cpu = run_gateway(url, args.messages, conc, args.size, api, pg,
                                                        2 if name.endswith("x2") else 1)
                        rates[name].append(args.messages / secs)
                        cpus[name].append(cpu / args.messages * 1000)
                        print(f"  {api} c={conc} run {run + 1} {name:<12} {args.messages / secs:8.0f} msg/s  "
                              f"{cpus[name][-1]:.3f} ms CPU/msg")
                b, g = statistics.median(rates["bare"]), statistics.median(rates["mailgw"])
                wall_ms = (1 / g - 1 / b) * 1000  # time per message beyond the bare call's
                cpu_ms = statistics.median(cpus["mailgw"]) - statistics.median(cpus["bare"])
                verdict = "ok" if wall_ms < 1.0 else "OVER 1 ms"
                ok = ok and wall_ms < 1.0
                print(f"{api} c={conc}: bare {b:7.0f} msg/s  mailgw {g:7.0f} msg/s  ratio {g / b:4.2f}  "
                      f"overhead {wall_ms:.3f} ms/msg [{verdict}]  (extra CPU {cpu_ms:.3f} ms/msg)")
                for name in names[2:]:
                    r = statistics.median(rates[name])
                    print(f"{api} c={conc}: {name:<12} {r:7.0f} msg/s  {r / g:4.2f}x mailgw (SQLite)  "
                          f"CPU {statistics.median(cpus[name]):.3f} ms/msg")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        if cluster is not None:
            cluster.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
