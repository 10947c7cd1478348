"""/metrics (Prometheus text format) and /healthz on an optional loopback HTTP endpoint (`metrics.bind`).

Values are read at scrape time from the components that own them (spool counts, listeners, workers, breakers,
directory), so there is one source of truth and nothing to keep in sync. A tiny HTTP/1.0 responder is enough
for a scraper and a health probe; no framework.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from gateway.config import split_host_port
from gateway.logs import get_logger

log = get_logger("mailgw.metrics")

Sample = tuple[str, dict[str, str], float]


def render(families: Iterable[tuple[str, str, str, list[Sample]]]) -> str:
    """Prometheus text exposition: (name, type, help, samples) -> text."""
    out = []
    for name, kind, helptext, samples in families:
        out.append(f"# HELP {name} {helptext}")
        out.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{sample_name}{{{label_text}}} {value:g}" if label_text else f"{sample_name} {value:g}")
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MetricsServer:
    """Serves what `collect()` returns. `health()` returns (ok, details) for /healthz."""

    def __init__(self, bind: str, collect: Callable[[], Any], health: Callable[[], Any]):
        self.host, self.port = split_host_port(bind, any_port=True)
        self.collect = collect
        self.health = health
        self.server: asyncio.Server | None = None
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        log.info("metrics.listening", address=f"{self.host}:{self.bound_port}")
        await self._stopped.wait()

    @property
    def bound_port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self._stopped.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = await reader.readline()
                while (await reader.readline()).strip():
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            if parts[:1] != ["GET"]:
                status, ctype, body = "405 Method Not Allowed", "text/plain", "GET only\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", "text/plain; version=0.0.4", render(await self.collect())
            elif path == "/healthz":
                ok, details = await self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "application/json", json.dumps({"ok": ok, **details}) + "\n"
            else:
                status, ctype, body = "404 Not Found", "text/plain", "try /metrics or /healthz\n"
            data = body.encode()
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        except Exception as exc:  # a scrape must never hurt the daemon
            log.warning("metrics.request_failed", error=repr(exc))
        finally:
            writer.close()


async def daemon_families(daemon: Any) -> list[tuple[str, str, str, list[Sample]]]:
    """Everything the daemon knows, as metric families."""
    fams: list[tuple[str, str, str, list[Sample]]] = []
    counts = await daemon.spool.counts() if daemon.spool is not None else {}
    fams.append(("mailgw_spool_entries", "gauge", "Spool entries by direction and state",
                 [("mailgw_spool_entries", {"direction": d, "state": s}, n) for (d, s), n in sorted(counts.items())]))
    fams.append(("mailgw_intake_accepted_total", "counter", "Messages acknowledged by each listener",
                 [("mailgw_intake_accepted_total", {"listener": x.cfg.bind, "kind": x.cfg.kind}, x.handler.accepted)
                  for x in daemon.listeners]))
    fams.append(("mailgw_intake_sessions", "gauge", "Open sessions per listener",
                 [("mailgw_intake_sessions", {"listener": x.cfg.bind, "kind": x.cfg.kind}, len(x.sessions))
                  for x in daemon.listeners]))
    inbound = getattr(daemon, "inbound", None)
    worker = getattr(inbound, "worker", None)
    if worker is not None:
        fams.append(("mailgw_inbound_total", "counter", "Inbound delivery outcomes",
                     [("mailgw_inbound_total", {"outcome": k}, v) for k, v in sorted(worker.stats.items())]))
    clients = getattr(inbound, "clients", {}) or {}
    fams.append(("mailgw_odoo_breaker_open", "gauge", "1 while an instance's circuit breaker is open",
                 [("mailgw_odoo_breaker_open", {"instance": name}, float(_breaker_state(c) == "open"))
                  for name, c in sorted(clients.items())]))
    directory = getattr(getattr(inbound, "directory", None), "current", None)
    if directory is not None:
        fams.append(("mailgw_directory_age_seconds", "gauge", "Seconds since the instance's aliases were fetched",
                     [("mailgw_directory_age_seconds", {"instance": n}, time.time() - d.fetched_at)
                      for n, d in sorted(directory.instances.items())]))
        fams.append(("mailgw_directory_aliases", "gauge", "Aliases known per instance",
                     [("mailgw_directory_aliases", {"instance": n}, len(d.aliases))
                      for n, d in sorted(directory.instances.items())]))
    sender = getattr(getattr(daemon, "outbound", None), "sender", None)
    if sender is not None:
        fams += outbound_families(sender)
    dns_status = getattr(daemon, "dns_status", None)
    if dns_status:
        fams.append(("mailgw_dns_check_status", "gauge", "Last dns-check per domain: 0 ok, 1 warn, 2 fail",
                     [("mailgw_dns_check_status", {"domain": d}, v) for d, v in sorted(dns_status.items())]))
    fams.append(("mailgw_up_seconds", "gauge", "Seconds since the daemon started",
                 [("mailgw_up_seconds", {}, time.time() - daemon.started_at)]))
    return fams


def outbound_families(sender: Any) -> list[tuple[str, str, str, list[Sample]]]:
    """SMTP sessions and per-destination limits of the outbound sender (gateway/outbound/)."""
    pool, dests = sender.pool, sender.destinations.snapshot()
    sessions = [("mailgw_outbound_sessions_total", {"how": "opened"}, pool.opened),
                ("mailgw_outbound_sessions_total", {"how": "reused"}, pool.reused)]
    rate = [("mailgw_outbound_destination_rate", {"destination": str(d["destination"])}, float(d["rate"]))
            for d in dests if d["rate"] is not None]
    return [
        ("mailgw_outbound_sessions_total", "counter", "SMTP sessions opened, and reused for another message",
         sessions),
        ("mailgw_outbound_sessions_idle", "gauge", "Open SMTP sessions waiting for the next message",
         [("mailgw_outbound_sessions_idle", {}, pool.idle_count())]),
        ("mailgw_outbound_destination_rate", "gauge", "Current messages/s limit per destination (when limited)",
         rate),
        ("mailgw_outbound_destination_throttles_total", "counter", "Throttling replies (421, 4.7.x) per destination",
         [("mailgw_outbound_destination_throttles_total", {"destination": str(d["destination"])}, d["throttles"])
          for d in dests]),
    ]


def _breaker_state(client: Any) -> str:
    return str(getattr(getattr(client, "breaker", None), "state", "closed"))


async def daemon_health(daemon: Any) -> tuple[bool, dict[str, Any]]:
    """Healthy = listeners bound, spool answers. Odoo being down is reported, not unhealthy: mail still spools."""
    details: dict[str, Any] = {"listeners": [x.address for x in daemon.listeners]}
    try:
        counts = await daemon.spool.counts()
        details["spool"] = {f"{d}/{s}": n for (d, s), n in counts.items()}
        ok = True
    except Exception as exc:
        details["spool_error"] = str(exc)
        ok = False
    inbound = getattr(daemon, "inbound", None)
    details["odoo"] = {name: _breaker_state(c) for name, c in (getattr(inbound, "clients", {}) or {}).items()}
    return ok, details
