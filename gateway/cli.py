"""`mailgw` entry point. Each command family lives in gateway/commands/<name>.py and registers itself."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.logs import setup_logging

# Order here is the order in --help.
COMMAND_MODULES = (
    "serve",
    "check_config",
    "pipe",
    "queue",
    "directory",
    "route",
    "bounce",
    "dns",
    "imap",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgw",
        description="Mail gateway beside Odoo: receives mail (SMTP, LMTP, pipe, IMAP, POP3), spools it "
        "durably, routes it like Odoo does and delivers it to Odoo; relays Odoo's outbound mail.",
    )
    parser.add_argument("--version", action="version", version=f"mailgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"gateway.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Commands print results on stdout; log lines go to stderr (serve reconfigures from its config).
    setup_logging("warning", "auto", sys.stderr)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 64
    rc = func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
