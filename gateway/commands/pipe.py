"""`mailgw pipe`: one message on stdin into the spool; a drop-in for odoo-mailgate.py.

Exit codes are chosen for the MTA that runs us (Postfix pipe(8), Exim, procmail): 0 only after the spool
commit returned; 75 (EX_TEMPFAIL) for anything that may work later (spool locked, disk full, config
broken), so the MTA keeps the mail and retries; 67 (EX_NOUSER) only when no recipient is one of ours; 64 for
bad usage. The daemon does not need to run: the inbound worker picks the entry up when it does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from gateway.admission import domain_of
from gateway.commands import SubParsers, add_config_arg, load_config_or_report
from gateway.config import Config
from gateway.exitcodes import EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from gateway.headers import envelope_from_headers, extract_message_id
from gateway.host import default_hostname
from gateway.spool import Envelope, open_spool


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "pipe", help="spool one message read from stdin (drop-in for odoo-mailgate.py)",
        description="Read one RFC 5322 message on stdin and store it in the spool. The envelope comes from "
        "--sender/--rcpt (Postfix: pipe ... argv=mailgw pipe --sender ${sender} --rcpt ${recipient}) or, "
        "without them, from Return-Path and Delivered-To/X-Original-To/To/Cc/Resent-* (only our domains). "
        "Exit 0 after the commit, 75 on a transient problem (the MTA retries), 67 when no recipient is ours. "
        "odoo-mailgate.py's options are accepted and ignored: the Odoo connection comes from the config.")
    add_config_arg(p)
    p.add_argument("--sender", "-f", help="envelope sender (empty or <> for the null sender)")
    p.add_argument("--rcpt", "-r", action="append", default=[], help="envelope recipient (repeatable)")
    legacy = p.add_argument_group("odoo-mailgate.py compatibility (ignored)")
    legacy.add_argument("-d", "--database", dest="legacy_db")
    legacy.add_argument("-u", "--userid", dest="legacy_uid")
    legacy.add_argument("-p", "--password", dest="legacy_password")
    legacy.add_argument("--host", dest="legacy_host")
    legacy.add_argument("--port", dest="legacy_port")
    legacy.add_argument("--proto", dest="legacy_proto")
    legacy.add_argument("--debug", action="store_true", dest="legacy_debug")
    legacy.add_argument("--retry-status", action="store_true", dest="legacy_retry")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        raw = sys.stdin.buffer.read()
    except Exception as exc:
        print(f"mailgw pipe: cannot read stdin: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    if not raw.strip():
        print("mailgw pipe: empty message on stdin", file=sys.stderr)
        return EX_USAGE
    config = load_config_or_report(args.config, prefix="mailgw pipe: ")
    if config is None:
        return EX_TEMPFAIL  # a broken config is an operator problem, not the sender's: keep the mail at the MTA
    ours = config.domain_owner
    header_sender, header_rcpts, _ = envelope_from_headers(raw, ours.__contains__)
    # The MTA's envelope (--sender/--rcpt) wins; what it leaves out comes from the headers.
    if args.sender is None:
        sender = header_sender if not args.rcpt else ""
    else:
        sender = "" if args.sender.strip() in ("", "<>") else args.sender.strip().strip("<>")
    rcpts = [r.strip().strip("<>") for r in args.rcpt] or header_rcpts
    rcpts = [r for r in rcpts if domain_of(r) in ours]
    if not rcpts:
        print("mailgw pipe: no recipient in a domain this gateway serves", file=sys.stderr)
        return EX_NOUSER
    try:
        return asyncio.run(_store(config, sender, rcpts, raw))
    except Exception as exc:
        print(f"mailgw pipe: not stored, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL


async def _store(config: Config, sender: str, rcpts: list[str], raw: bytes) -> int:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    spool = await open_spool(config)
    try:
        env = Envelope(mail_from=sender, rcpt_tos=tuple(rcpts), intake="pipe", peer="stdin", received_at=time.time())
        queue_id, _ = await spool.put(env, raw, message_id=extract_message_id(raw),
                                      message_id_domain=default_hostname())
    finally:
        await spool.close()
    print(queue_id)
    return EX_OK
