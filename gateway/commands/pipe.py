"""`mailgw pipe`: one message on stdin into the spool; a drop-in for odoo-mailgate.py.

Exit codes are sysexits(3), chosen for the MTA that runs us (Postfix pipe(8), Exim, procmail). Postfix retries
75 and bounces the others, with this command's output (which starts with an RFC 3463 status code) as the reason:
  0   stored: the spool commit returned (the queue id is printed)
  64  usage error (unknown option, missing argument, more recipients than the intake accepts)
  65  the message is larger than the listeners' max_message_size (5.3.4), or empty
  67  no recipient is in a domain this gateway serves (5.1.1)
  75  anything that may work later: spool locked or full, config unreadable or invalid, daemon gone mid-answer

When the daemon runs, the message goes to it over `<state_dir>/pipe.sock` (gateway/intake/pipe_handoff.py: no
heavy import on that path); otherwise this process opens the spool itself. Both are equally durable.
"""

from __future__ import annotations

import sys

from gateway.commands import DEFAULT_CONFIG, SubParsers, add_config_arg
from gateway.intake.pipe_handoff import Answer, Fallback, hand_over, too_big

EX_OK, EX_TEMPFAIL = 0, 75  # gateway.exitcodes (not imported: this module stays light)


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "pipe", help="spool one message read from stdin (drop-in for odoo-mailgate.py)",
        description="Read one RFC 5322 message on stdin and store it in the spool. The envelope comes from "
        "--sender/--rcpt (Postfix master.cf: argv=mailgw pipe -c CONFIG --sender ${sender} --rcpt ${recipient}; "
        "see docs/postfix.md) or, without them, from Return-Path and Delivered-To/X-Original-To/To/Cc/Resent-* "
        "(only our domains). Exit 0 after the spool commit, 75 on a transient problem (the MTA retries), 65 when "
        "the message is too big, 67 when no recipient is ours, 64 on a usage error. The daemon need not run. "
        "odoo-mailgate.py's options are accepted and ignored: the Odoo connection comes from the config.")
    add_config_arg(p)
    p.add_argument("--sender", "-f", metavar="ADDR",
                   help="envelope sender (empty, <> or MAILER-DAEMON for the null sender)")
    p.add_argument("--rcpt", "-r", nargs="+", action="extend", default=[], metavar="ADDR",
                   help="envelope recipient(s): --rcpt a@x b@x (as Postfix expands ${recipient}) or repeated")
    legacy = p.add_argument_group("odoo-mailgate.py compatibility (accepted, ignored)")
    legacy.add_argument("-d", "--database", dest="legacy_db", metavar="DB")
    legacy.add_argument("-u", "--userid", dest="legacy_uid", metavar="UID")
    legacy.add_argument("-p", "--password", dest="legacy_password", metavar="PASSWORD")
    legacy.add_argument("--password-file", dest="legacy_password_file", metavar="FILE")
    legacy.add_argument("--host", dest="legacy_host", metavar="HOST")
    legacy.add_argument("--port", dest="legacy_port", metavar="PORT")
    legacy.add_argument("--proto", dest="legacy_proto", metavar="PROTO")
    legacy.add_argument("--timeout", dest="legacy_timeout", metavar="SECONDS")
    legacy.add_argument("--debug", action="store_true", dest="legacy_debug")
    legacy.add_argument("--retry-status", action="store_true", dest="legacy_retry")
    # own_logging: the fast path must not pay for structlog; the slow path sets logging up itself.
    p.set_defaults(func=lambda a: run(a.config, a.sender, a.rcpt), own_logging=True)


def quick_args(argv: list[str]) -> tuple[str, str | None, list[str]] | None:
    """(config, sender, recipients) from the command line an MTA uses (-c/--config, --sender/-f, --rcpt/-r with one
    or more addresses), parsed without argparse; None for anything else (help, odoo-mailgate.py's options, a value
    that looks like an option), which argparse then handles, usage errors included."""
    config, sender, rcpts = DEFAULT_CONFIG, None, []
    i = 0
    while i < len(argv):
        name = argv[i]
        if name in ("--rcpt", "-r"):
            j = i + 1
            while j < len(argv) and not argv[j].startswith("-"):
                j += 1
            if j == i + 1:
                return None
            rcpts.extend(argv[i + 1:j])
            i = j
            continue
        if name not in ("-c", "--config", "--sender", "-f") or i + 1 >= len(argv) or argv[i + 1].startswith("-"):
            return None
        if name in ("-c", "--config"):
            config = argv[i + 1]
        else:
            sender = argv[i + 1]
        i += 2
    return config, sender, rcpts


def quick_run(argv: list[str]) -> int | None:
    """`mailgw pipe ARGS` without argparse when `quick_args` understands ARGS (gateway/cli.py calls it first)."""
    parsed = quick_args(argv)
    return None if parsed is None else run(*parsed)


def run(config: str, sender: str | None, rcpts: list[str]) -> int:
    raw: bytes | None = None
    try:
        answer = hand_over(config, sender, rcpts, sys.stdin.buffer)
    except Fallback as fallback:  # the daemon cannot take it: store it ourselves
        raw = fallback.raw
        answer = store_without_daemon(config, sender, rcpts, raw)
    return report(answer)


def report(answer: Answer) -> int:
    if answer.exit == EX_OK:
        print(answer.queue_id)
    else:
        # pipe(8) reads the RFC 3463 code at the start of the output into its DSN; the rest is for people.
        code, _, text = (answer.error or "4.3.0 failed").partition(" ")
        print(f"{code} mailgw pipe: {text}", file=sys.stderr)
    return answer.exit


def store_without_daemon(config_path: str, sender: str | None, rcpts: list[str], raw: bytes | None) -> Answer:
    """The slow path: load the config, read stdin (if the fast path did not), open the spool, store."""
    import asyncio

    from gateway.commands import load_config_or_report
    from gateway.host import default_hostname
    from gateway.intake.pipe import pipe_limits, store_piped
    from gateway.logs import setup_logging
    from gateway.spool import opened_spool

    setup_logging("warning", "auto")
    config = load_config_or_report(config_path, prefix="4.3.5 mailgw pipe: ")
    if config is None:  # an operator problem, not the sender's: the MTA keeps the mail
        return Answer(EX_TEMPFAIL, error="4.3.5 invalid configuration (see above)")
    limit, _ = pipe_limits(config)
    if raw is None:
        try:
            raw = sys.stdin.buffer.read(limit + 1)
        except OSError as exc:
            return Answer(EX_TEMPFAIL, error=f"4.3.0 cannot read stdin: {exc}")
    if len(raw) > limit:
        return too_big(limit)

    async def store() -> Answer:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        async with opened_spool(config) as spool:
            return await store_piped(config, spool, sender, rcpts, raw, hostname=default_hostname())

    try:
        return asyncio.run(store())
    except Exception as exc:
        return Answer(EX_TEMPFAIL, error=f"4.3.0 not stored, try again later: {exc}")
