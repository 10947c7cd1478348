"""`dns_check.interval`: run dns-check inside the daemon, log one summary line, expose the status as a metric."""

from __future__ import annotations

import asyncio
from typing import Any

from dns_checks.plan import MailDomain, plan_checks
from dns_checks.report import Status, summarize
from dns_checks.resolver import DnsClient, parse_nameserver
from dns_checks.runner import run_checks
from gateway.logs import get_logger

log = get_logger("mailgw.dnscheck")


class DnsWatch:
    """Runs at start and every `dns_check.interval`; results go to `daemon.dns_status` (domain -> 0/1/2)."""

    def __init__(self, daemon: Any):
        self.daemon = daemon
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        interval = self.daemon.config.dns_check.interval
        while not self._stopped.is_set():
            await self.check_once()
            try:
                await asyncio.wait_for(self._stopped.wait(), interval)
            except TimeoutError:
                pass

    async def check_once(self) -> None:
        cfg = self.daemon.config
        inbound = self.daemon.inbound
        extra = []
        if inbound is not None:
            extra = [MailDomain(dom.name.lower()) for inst in inbound.directory.current.instances.values()
                     for dom in inst.domains]
        try:
            reports = await run_checks(plan_checks(cfg, extra_domains=extra),
                                       DnsClient.create([parse_nameserver(s) for s in cfg.dns_check.nameservers]))
        except Exception as exc:  # diagnostics must never disturb mail
            log.warning("dnscheck.failed", error=repr(exc))
            return
        summary = summarize(reports)
        self.daemon.dns_status = {d: Status(s).rank for d, s in summary.domains.items()}
        level = log.info if summary.metric == 0 else log.warning
        level("dnscheck.summary", line=summary.line, problems=summary.problems[:10])

    async def stop(self) -> None:
        self._stopped.set()
