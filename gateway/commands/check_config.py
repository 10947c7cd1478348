"""`mailgw check-config`: validate config.yaml; print ok or every error with its YAML path."""

from __future__ import annotations

import argparse
import sys

from gateway.commands import SubParsers, add_config_arg, report_config_error
from gateway.config import ConfigError, load_config
from gateway.exitcodes import EX_CONFIG


def register(sub: SubParsers) -> None:
    p = sub.add_parser("check-config", help="validate the config file (exit 78 on error)",
                       description="Validate the config. Prints 'ok', or one line per error with its YAML path "
                       "and exits 78 (EX_CONFIG). A secret the config names but that cannot be read now (an unset "
                       "environment variable, a missing file) is a warning on stderr saying what will not work "
                       "without it, not an error: the daemon runs without it (so systemd's ExecStartPre passes) "
                       "and says the same at start. Secret values are never printed.")
    add_config_arg(p)
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 78)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        if cfg.spool.backend == "postgres":
            # Unlike the other secrets, the daemon cannot run without this one: it is where mail is stored.
            cfg.spool.dsn()
            try:
                import asyncpg  # noqa: F401
            except ImportError:
                raise ConfigError(["spool.backend: postgres needs asyncpg: pip install 'mailgw[postgres]'"]) from None
    except ConfigError as exc:
        report_config_error(args.config, exc)
        return EX_CONFIG
    warnings = cfg.secret_problems()
    if cfg.bounce.verp_warning():
        warnings.append(str(cfg.bounce.verp_warning()))
    for line in warnings:
        print(f"{args.config}: warning: {line}", file=sys.stderr)
    if warnings and args.strict:
        return EX_CONFIG
    print("ok")  # valid; the warnings went to stderr
    return 0
