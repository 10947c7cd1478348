"""`mailgw directory show|refresh`: the alias directory the gateway routes with (cached per instance)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from gateway.commands import SubParsers, add_config_arg, load_config_or_report
from gateway.config import Config, ConfigError
from gateway.exitcodes import EX_CONFIG, EX_TEMPFAIL, EX_USAGE
from routing.directory import Directory


def register(sub: SubParsers) -> None:
    p = sub.add_parser("directory", help="show or refresh the alias directory read from Odoo",
                       description="The aliases and alias domains of each Odoo instance, as the gateway routes "
                       "with them. `show` prints the on-disk cache (works while Odoo is down); `refresh` "
                       "fetches from Odoo now and rewrites the cache (the daemon also refreshes on a timer "
                       "and on SIGHUP).")
    dsub = p.add_subparsers(dest="directory_command", metavar="ACTION")
    show = dsub.add_parser("show", help="print the cached directory", description=(
        "Print the cached alias directory: per Odoo instance its mail domains, alias domains (bounce, catchall "
        "and default From addresses), the loop-guard limits and every alias with its model. Read from "
        "<state_dir>/directory.json, so it works while Odoo is down."))
    show.add_argument("--json", action="store_true", help="machine-readable (the cache format)")
    add_config_arg(show)
    show.set_defaults(func=run_show)
    refresh = dsub.add_parser("refresh", help="fetch from Odoo now and write the cache", description=(
        "Read aliases and alias domains from each Odoo instance now and rewrite the cache. Prints one line per "
        "instance: 'NAME: ok', or 'NAME: why' on stderr. Exit 0, 75 when an instance could not be read (the "
        "cache keeps its previous snapshot), 78 on a config problem."))
    refresh.add_argument("--instance", action="append", help="only this instance (repeatable)")
    add_config_arg(refresh)
    refresh.set_defaults(func=run_refresh)
    p.set_defaults(func=lambda _args: (p.print_help(), EX_USAGE)[1])


def _load(path: str) -> Config | None:
    return load_config_or_report(path)


def run_show(args: argparse.Namespace) -> int:
    from gateway.odoo.directory import cache_path, load_cached

    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    directory = load_cached(cfg)
    if args.json:
        print(json.dumps(directory.to_dict(), indent=2, sort_keys=True))
        return 0
    print(render(directory, cfg))
    if not directory.instances:
        print(f"\n(no cached snapshot at {cache_path(cfg)}: run `mailgw directory refresh`)", file=sys.stderr)
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "never"


def render(directory: Directory, cfg: Config) -> str:
    out: list[str] = []
    for inst in cfg.odoo:
        snap = directory.instances.get(inst.name)
        head = f"instance {inst.name} ({inst.api} {inst.url}, database {inst.database})"
        out.append(head)
        out.append(f"  mail domains: {', '.join(inst.domains)}")
        if snap is None:
            out.append("  snapshot: none yet (never fetched)")
            out.append("")
            continue
        out.append(f"  Odoo {snap.server_version or '?'}, fetched {_when(snap.fetched_at)}")
        for dom in snap.domains:
            out.append(f"  alias domain {dom.name}: bounce {dom.bounce_email or '-'}, catchall "
                       f"{dom.catchall_email or '-'}, from {dom.default_from_email or '-'}")
        if snap.allowed_domains:
            out.append(f"  mail.catchall.domain.allowed: {', '.join(snap.allowed_domains)}")
        out.append(f"  loop guard: {snap.loop_threshold} mails / {snap.loop_minutes} min"
                   + (f", {len(snap.loop_allowed)} allowed senders" if snap.loop_allowed else ""))
        out.append(f"  aliases ({len(snap.aliases)}):")
        for a in snap.aliases:
            target = a.model + (f"/{a.force_thread_id}" if a.force_thread_id else "")
            flags = [a.contact, a.status] + (["incoming-local"] if a.incoming_local else [])
            out.append(f"    {a.full_name:<40} -> {target} ({', '.join(flags)})")
        out.append("")
    return "\n".join(out).rstrip()


def run_refresh(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging

    # One line per instance below says how each refresh went; the sync's own warnings (directory.refresh_failed)
    # would say it a second time, as JSON.
    setup_logging("error", "auto")
    cfg = _load(args.config)
    if cfg is None:
        return EX_CONFIG
    try:
        report = asyncio.run(_refresh(cfg, args.instance))
    except ConfigError as exc:  # a secret that cannot be read
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EX_CONFIG
    failed = False
    for name, error in report.items():
        if error is None:
            print(f"{name}: ok")
        else:
            failed = True
            print(f"{name}: {error}", file=sys.stderr)
    return EX_TEMPFAIL if failed else 0


async def _refresh(cfg: Config, only: list[str] | None) -> dict[str, Any]:
    from gateway.inbound import build_clients
    from gateway.odoo.directory import DirectorySync

    clients = build_clients(cfg)
    try:
        sync = DirectorySync(cfg, clients)
        return await sync.refresh(only)
    finally:
        for c in clients.values():
            await c.close()
