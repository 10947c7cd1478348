"""The Odoo side as one daemon service: the clients, the directory sync and the inbound worker."""

from __future__ import annotations

import asyncio

from gateway.config import Config
from gateway.inbound.worker import BounceHandler, InboundWorker
from gateway.odoo.client import OdooClient
from gateway.odoo.directory import DirectorySync
from gateway.spool import Spool


def build_clients(config: Config) -> dict[str, OdooClient]:
    d = config.delivery
    return {inst.name: OdooClient(inst, breaker_threshold=d.breaker_threshold, breaker_cooldown=d.breaker_cooldown,
                                  cache_size=config.routing.reply_cache_size, cache_ttl=config.routing.reply_cache_ttl)
            for inst in config.odoo}


class InboundService:
    """The Odoo side as one daemon service: clients, directory sync, inbound worker; stopped in that order
    reversed (worker first, so in-flight deliveries still have their connections)."""

    def __init__(self, config: Config, spool: Spool, *, hostname: str | None = None,
                 bounce_handler: BounceHandler | None = None):
        self.config = config
        self.clients = build_clients(config)
        self.directory = DirectorySync(config, self.clients)
        self.worker = InboundWorker(config, spool, self.clients, self.directory, hostname=hostname,
                                    bounce_handler=bounce_handler)
        self._starts: list[asyncio.Task[bool]] = []

    async def run(self) -> None:
        # Version and login in the background: an Odoo that hangs at start must not delay the worker (it
        # authenticates lazily) nor the cached directory.
        self._starts = [asyncio.create_task(c.start(), name=f"odoo-start-{n}") for n, c in self.clients.items()]
        await self.directory.start()
        await self.worker.run()

    async def stop(self) -> None:
        for task in self._starts:
            task.cancel()
        await self.worker.stop()
        await self.directory.stop()
        for client in self.clients.values():
            await client.close()

    async def reload(self, config: Config) -> None:
        """SIGHUP: refresh the directory now (instance changes need a restart)."""
        await self.directory.refresh()
