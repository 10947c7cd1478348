"""`mailgw spool status|migrate|export|import`: the spool itself — its schema, and moving entries between spools
(SQLite -> PostgreSQL when a gateway scales out; docs/scale-out.md)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.commands import SubParsers, add_config_arg, load_config_or_report
from gateway.config import Config, ConfigError
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_TEMPFAIL, EX_USAGE
from gateway.spool import Spool, SpoolError, SpoolUnavailable, SqliteSpool, open_spool, opened_spool, spool_location


def register(sub: SubParsers) -> None:
    p = sub.add_parser("spool", help="the spool's schema; move entries between spools",
                       description="The spool itself: its schema version, migrations, and moving entries between "
                       "spools (SQLite -> PostgreSQL). The daemon migrates the schema at start-up too.")
    ssub = p.add_subparsers(dest="spool_command", metavar="ACTION")
    st = ssub.add_parser("status", help="backend, location, schema version, entries by state", description=(
        "Say which spool the config names (SQLite file, or PostgreSQL server, database and schema; never the "
        "password), its schema version (PostgreSQL) and how many entries it holds in each direction and state. "
        "With PostgreSQL the counts are those of the queue every gateway shares."))
    add_config_arg(st)
    st.set_defaults(func=lambda a: _run(a, _status))
    mig = ssub.add_parser(
        "migrate", help="bring the schema up to date; with --from, copy a SQLite spool's entries in",
        description="Apply the schema migrations this mailgw knows to the configured spool (safe while gateways run, "
        "and when several run it at once). With --from sqlite PATH, also copy every entry of that SQLite spool "
        "into the configured one: queue ids, states and messages are kept; entries already there are skipped, so "
        "it is safe to run again. Stop the gateway that used the SQLite spool first.")
    add_config_arg(mig)
    mig.add_argument("--from", dest="source", nargs=2, metavar=("sqlite", "PATH"),
                     help="the SQLite spool file to copy from")
    mig.set_defaults(func=lambda a: _run(a, _migrate))
    exp = ssub.add_parser("export", help="write every entry as JSON Lines (messages base64-encoded)", description=(
        "Write every entry of the configured spool (or of the SQLite file given with --from) as JSON Lines: a "
        "header line, then one object per entry with all its columns and the message in base64. `mailgw spool "
        "import` reads it; moving a spool to another host or backend this way keeps queue ids and states."))
    add_config_arg(exp)
    exp.add_argument("--from", dest="source", nargs=2, metavar=("sqlite", "PATH"),
                     help="export this SQLite spool file instead of the configured spool")
    exp.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    exp.set_defaults(func=lambda a: _run(a, _export))
    imp = ssub.add_parser("import", help="store the entries of an export in the configured spool (idempotent)",
                          description=(
        "Store the entries of a `mailgw spool export` in the configured spool, with their queue ids, states and "
        "messages; claims are cleared. An entry whose queue id or mailbox ledger key is already there is "
        "skipped, so importing twice adds nothing. Stop the gateway that wrote the export first."))
    add_config_arg(imp)
    imp.add_argument("file", help="an export written by `mailgw spool export` (- for stdin)")
    imp.set_defaults(func=lambda a: _run(a, _import))
    p.set_defaults(func=lambda a: (p.print_help(), EX_USAGE)[1])


def _run(args: argparse.Namespace, fn: Callable[[Config, argparse.Namespace], Coroutine[Any, Any, int]]) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return EX_CONFIG
    source = getattr(args, "source", None)
    if source:
        if source[0] != "sqlite":
            print(f"mailgw spool: --from {source[0]}: only sqlite is supported", file=sys.stderr)
            return EX_USAGE
        if not Path(source[1]).is_file():
            print(f"mailgw spool: no SQLite spool at {source[1]}", file=sys.stderr)
            return EX_NOINPUT
    # Files are opened here, outside the event loop.
    try:
        if getattr(args, "file", None) is not None:
            args.input = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
        if getattr(args, "output", None) is not None:
            args.out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"mailgw spool: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    try:
        return asyncio.run(fn(config, args))
    except SpoolUnavailable as exc:
        print(f"mailgw spool: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except (SpoolError, ConfigError) as exc:
        print(f"mailgw spool: {exc}", file=sys.stderr)
        return EX_DATAERR
    finally:
        for name in ("input", "out"):
            fp = getattr(args, name, None)
            if fp is not None and fp not in (sys.stdin, sys.stdout):
                fp.close()


async def _sqlite_source(args: argparse.Namespace) -> SqliteSpool:
    return await SqliteSpool.open(args.source[1])


async def _status(config: Config, args: argparse.Namespace) -> int:
    async with opened_spool(config) as spool:
        print(f"backend: {config.spool.backend}")
        print(f"spool: {spool_location(config)}")
        version = getattr(spool, "schema_version", None)
        if version is not None:
            print(f"schema version: {await version()}")
        counts = await spool.counts()
        for (direction, state), n in sorted(counts.items()):
            print(f"{direction}/{state}: {n}")
        if not counts:
            print("no entries")
    return 0


async def _migrate(config: Config, args: argparse.Namespace) -> int:
    async with opened_spool(config) as spool:  # opening applies what is missing
        before, after = getattr(spool, "migrated", (None, None))
        if after is None:
            print(f"{spool_location(config)}: SQLite creates its schema when it opens; nothing to migrate")
        elif before == after:
            print(f"{spool_location(config)}: schema at version {after}, up to date")
        else:
            print(f"{spool_location(config)}: schema migrated from version {before} to {after}")
        if args.source:
            return await _copy_in(spool, args)
    return 0


async def _copy_in(dst: Spool, args: argparse.Namespace) -> int:
    from gateway.spool.transfer import copy_entries

    src = await _sqlite_source(args)
    try:
        report = await copy_entries(src, dst)
    finally:
        await src.close()
    print(f"copied {report.added} entries from {args.source[1]}; {report.skipped} already there")
    _warn_claimed(report.claimed)
    return 0


def _warn_claimed(claimed: int) -> None:
    if claimed:
        print(f"warning: {claimed} entries were being worked on in the source (claimed): if its gateway is still "
              "running, stop it and run this again; they were copied unclaimed", file=sys.stderr)


async def _export(config: Config, args: argparse.Namespace) -> int:
    from gateway.spool.transfer import write_export

    src = await _sqlite_source(args) if args.source else await open_spool(config)
    try:
        count = await write_export(src, args.out)
    finally:
        await src.close()
    print(f"exported {count} entries", file=sys.stderr)
    return 0


async def _import(config: Config, args: argparse.Namespace) -> int:
    from gateway.spool.transfer import read_export

    async with opened_spool(config) as dst:
        report = await read_export(args.input, dst)
    print(f"imported {report.added} entries; {report.skipped} already there")
    _warn_claimed(report.claimed)
    return 0
