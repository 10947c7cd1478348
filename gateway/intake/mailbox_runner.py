"""Run only the mailbox intakes of a config: ``python -m gateway.intake.mailbox_runner -c CONFIG``.

Opens the spool, starts one `ImapPoller`/`Pop3Poller` per configured mailbox exactly as the daemon does, and
stops them on SIGTERM/SIGINT. It exists for the kill -9 system test (and for trying a mailbox config) until
`mailgw serve` starts the pollers itself; it does no routing or delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from gateway.config import ConfigError, load_config
from gateway.exitcodes import EX_CONFIG
from gateway.intake.imap import ImapPoller
from gateway.intake.pop import Pop3Poller
from gateway.logs import get_logger, setup_logging
from gateway.spool import open_spool


async def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{config_path}: {line}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.logging.level, config.logging.format)
    log = get_logger("mailgw.mailbox_runner")
    spool = await open_spool(config)
    pollers: list[ImapPoller | Pop3Poller] = [ImapPoller(m, config, spool) for m in config.imap]
    pollers += [Pop3Poller(m, config, spool) for m in config.pop3]
    tasks = [asyncio.create_task(p.run(), name=f"poller-{p.cfg.name}") for p in pollers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("mailbox_runner.ready", imap=len(config.imap), pop3=len(config.pop3))
    await stop.wait()
    await asyncio.gather(*(p.stop() for p in pollers))
    await asyncio.gather(*tasks, return_exceptions=True)
    await spool.close()
    log.info("mailbox_runner.stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.intake.mailbox_runner", description=__doc__)
    parser.add_argument("-c", "--config", required=True)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.config))


if __name__ == "__main__":
    sys.exit(main())
