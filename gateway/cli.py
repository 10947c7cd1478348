"""`mailgw` entry point. Each command family lives in gateway/commands/<name>.py and registers itself."""

from __future__ import annotations

import importlib
import sys

from gateway import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `mailgw pipe` pays for every import
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

# Command name -> module in gateway/commands. Order here is the order in --help.
COMMANDS = {
    "serve": "serve",
    "check-config": "check_config",
    "pipe": "pipe",
    "queue": "queue",
    "spool": "spool",
    "directory": "directory",
    "route": "route",
    "bounce": "bounce",
    "dns-check": "dns",
    "auth": "auth",
    "imap": "imap",
    "dkim": "dkim",
    "tls-report": "tls_report",
}
COMMAND_MODULES = tuple(COMMANDS.values())


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All commands, or with `only` just that one: `mailgw pipe` runs once per message under an MTA, so it
    must not pay for importing what the other commands need (DNS, bounce parsing …)."""
    import argparse
    from typing import NoReturn

    class Parser(argparse.ArgumentParser):
        """Usage errors exit 64 (EX_USAGE), not argparse's 2: MTAs read sysexits codes (Postfix bounces on 2),
        and `dns-check` gives 2 its own meaning. Subcommand parsers inherit the class."""

        def error(self, message: str) -> NoReturn:
            self.print_usage(sys.stderr)
            self.exit(64, f"{self.prog}: error: {message}\n")

    parser = Parser(
        prog="mailgw",
        description="Mail gateway beside Odoo: receives mail (SMTP, LMTP, pipe, IMAP, POP3), spools it "
        "durably, routes it like Odoo does and delivers it to Odoo; relays Odoo's outbound mail.",
    )
    parser.add_argument("--version", action="version", version=f"mailgw {__version__}")
    # -c is accepted before the command too (`mailgw -c config.yaml queue list`). Nobody's default is written
    # (SUPPRESS): a subcommand's default would otherwise overwrite the value given before it; main() fills
    # in the default when -c was given nowhere.
    from gateway.commands import add_config_arg

    add_config_arg(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[only]] if only in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(f"gateway.commands.{name}").register(sub)
    return parser


def command_name(argv: Sequence[str]) -> str | None:
    """The first word that is not an option nor the value of a -c/--config before it."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-c", "--config"):
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["pipe"]:  # forked by an MTA per message: its usual command line skips argparse
        from gateway.commands.pipe import quick_run

        rc = quick_run(argv[1:])
        if rc is not None:
            return rc
    parser = build_parser(command_name(argv))
    args = parser.parse_args(argv)
    args.config_given = hasattr(args, "config")  # `bounce parse` reads a config only when given one
    if not args.config_given:
        from gateway.commands import DEFAULT_CONFIG

        args.config = DEFAULT_CONFIG
    # Commands print results on stdout; log lines go to stderr (serve reconfigures from its config; pipe sets
    # logging up only on its slow path).
    if not getattr(args, "own_logging", False):
        from gateway.logs import setup_logging

        setup_logging("warning", "auto")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 64
    rc = func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
