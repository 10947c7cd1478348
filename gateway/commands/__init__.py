"""One module per `mailgw` command family; each exposes register(subparsers)."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `mailgw pipe` pays for every import
if TYPE_CHECKING:  # imported where used: `mailgw pipe`'s fast path loads neither argparse nor the config models
    import argparse
    from typing import Any

    from gateway.config import Config, ConfigError

    SubParsers = Any  # argparse._SubParsersAction is private; keep the annotation honest but loose
else:
    SubParsers = object  # annotations only (they are strings at run time)

DEFAULT_CONFIG = os.environ.get("MAILGW_CONFIG", "config.yaml")


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """-c/--config, with no default in argparse (SUPPRESS): a subcommand's default would overwrite a -c given
    before the command name. `gateway.cli.main` fills in DEFAULT_CONFIG when -c was given nowhere."""
    import argparse

    p.add_argument("-c", "--config", default=argparse.SUPPRESS, help=f"config file (default: {DEFAULT_CONFIG}, "
                   "or $MAILGW_CONFIG; may also come before the command)")


def load_config_or_report(path: str, *, prefix: str = "") -> Config | None:
    """The config, or None after printing every error with its YAML path on stderr (the caller picks the exit
    code: 78 for most commands, 75 for `pipe`, whose caller is an MTA that must retry)."""
    from gateway.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        report_config_error(path, exc, prefix=prefix)
        return None


def report_config_error(path: str, exc: ConfigError, *, prefix: str = "") -> None:
    for line in exc.errors:
        print(f"{prefix}{path}: {line}", file=sys.stderr)


def read_message(name: str) -> bytes:
    """A message file, or stdin for "-" (raises OSError)."""
    if name == "-":
        return sys.stdin.buffer.read()
    from pathlib import Path

    return Path(name).read_bytes()
