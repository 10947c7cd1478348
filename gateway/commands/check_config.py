"""`mailgw check-config`: validate config.yaml; print ok or every error with its YAML path."""

from __future__ import annotations

import argparse
import sys

from gateway.commands import SubParsers, add_config_arg, report_config_error
from gateway.config import ConfigError, load_config
from gateway.exitcodes import EX_CONFIG


def register(sub: SubParsers) -> None:
    p = sub.add_parser("check-config", help="validate the config file (exit 78 on error)",
                       description="Validate the config. Prints 'ok', or one line per error with its "
                       "YAML path, and exits 78 (EX_CONFIG).")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        # Secrets are only checked for presence here, never printed.
        for inst in cfg.odoo:
            inst.password()
        cfg.bounce.verp_secret()
        if cfg.bounce.verp_warning():
            print(f"{args.config}: warning: {cfg.bounce.verp_warning()}", file=sys.stderr)
    except ConfigError as exc:
        report_config_error(args.config, exc)
        return EX_CONFIG
    print("ok")
    return 0
