"""`mailgw serve` (not built yet)."""

from __future__ import annotations

import argparse
import sys

from gateway.commands import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("serve", help="(not built yet)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    print("mailgw serve: not built yet", file=sys.stderr)
    return 64
