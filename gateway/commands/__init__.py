"""One module per `mailgw` command family; each exposes register(subparsers)."""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_CONFIG = os.environ.get("MAILGW_CONFIG", "config.yaml")

SubParsers = Any  # argparse._SubParsersAction is private; keep the annotation honest but loose


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (default: %(default)s, "
                   "or $MAILGW_CONFIG)")
