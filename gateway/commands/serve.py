"""`mailgw serve`: run the daemon in the foreground (systemd Type=notify)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.commands import SubParsers, add_config_arg


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "serve", help="run the gateway daemon in the foreground",
        description="Run the gateway: listeners, pollers, workers. SIGTERM drains and exits, SIGHUP reloads "
        "the config (the old one stays if the new one is invalid). Exit 78 on an invalid config, 75 when "
        "another daemon already runs on the same state directory (state_dir/mailgw.lock).")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gateway.daemon import run as run_daemon

    return run_daemon(Path(args.config))
