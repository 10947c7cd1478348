"""`mailgw imap test NAME`: connect to a configured mailbox (IMAP or POP3) the way the poller does and report.

The first thing an operator runs: it checks DNS/TCP, TLS and the certificate, the login, the folder (SELECT,
read-write), the capabilities that matter (IDLE, MOVE, UIDPLUS; for POP3: UIDL, STLS) and how many messages
are in the mailbox's "new" view. It reads nothing and changes no flag.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Callable

from gateway.commands import SubParsers, add_config_arg, report_config_error
from gateway.config import Config, ConfigError, ImapConfig, Pop3Config, load_config
from gateway.exitcodes import EX_CONFIG, EX_NOPERM, EX_TEMPFAIL, EX_USAGE
from gateway.intake import imap as imap_intake
from gateway.intake import pop as pop_intake
from gateway.intake.mailbox import default_port
from gateway.intake.oauth2 import OAuth2Error, TokenSource

Say = Callable[[str], None]


def register(sub: SubParsers) -> None:
    p = sub.add_parser("imap", help="mailbox intakes (IMAP, POP3): test a configured mailbox",
                       description="Mailbox intakes. `mailgw imap test NAME` connects to the IMAP or POP3 mailbox "
                       "NAME from the config, logs in, selects the folder and reports capabilities and the number "
                       "of new messages, without reading or flagging anything.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    t = verbs.add_parser("test", help="connect, log in, select, report capabilities and new messages",
                         description="Connect to the IMAP or POP3 mailbox NAME of the config as the poller does "
                         "(TLS, login or OAuth 2.0), select its folder and report the server's capabilities and how "
                         "many messages wait, without reading, flagging or deleting anything. Exit 0 when it "
                         "works, 77 when the login is refused, 75 when the server cannot be reached or answers "
                         "wrongly (TLS included), 78 on a config problem.")
    t.add_argument("name", help="the mailbox name (imap[].name or pop3[].name)")
    t.add_argument("--protocol", choices=("imap", "pop3"), help="when an IMAP and a POP3 mailbox share the name")
    add_config_arg(t)
    t.set_defaults(func=run_test)
    p.set_defaults(func=lambda _args: (p.print_help(), EX_USAGE)[1])


def find_mailbox(config: Config, name: str, protocol: str | None) -> ImapConfig | Pop3Config:
    found: list[ImapConfig | Pop3Config] = []
    if protocol in (None, "imap"):
        found += [m for m in config.imap if m.name == name]
    if protocol in (None, "pop3"):
        found += [m for m in config.pop3 if m.name == name]
    if not found:
        names = [f"imap:{m.name}" for m in config.imap] + [f"pop3:{m.name}" for m in config.pop3]
        raise LookupError(f"no mailbox named {name!r} (configured: {', '.join(names) or 'none'})")
    if len(found) > 1:
        raise LookupError(f"both an IMAP and a POP3 mailbox are named {name!r}: add --protocol imap|pop3")
    return found[0]


def run_test(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        mailbox = find_mailbox(config, args.name, args.protocol)
        mailbox.check_secrets()  # presence only; never printed
    except ConfigError as exc:
        report_config_error(args.config, exc)
        return EX_CONFIG
    except LookupError as exc:
        print(f"mailgw imap test: {exc.args[0]}", file=sys.stderr)
        return EX_USAGE
    return asyncio.run(test_mailbox(mailbox, print))


async def test_mailbox(mailbox: ImapConfig | Pop3Config, say: Say) -> int:
    protocol = "imap" if isinstance(mailbox, ImapConfig) else "pop3"
    say(f"mailbox {mailbox.name} ({protocol}): {mailbox.host}:{default_port(mailbox, protocol)} tls={mailbox.tls}"
        + (f" ca_file={mailbox.ca_file}" if mailbox.ca_file else ""))
    try:
        if isinstance(mailbox, ImapConfig):
            await _test_imap(mailbox, say)
        else:
            await _test_pop3(mailbox, say)
    except (imap_intake.ImapAuthError, pop_intake.Pop3AuthError, OAuth2Error) as exc:
        say(f"FAILED: {exc}")
        return EX_NOPERM
    except ssl.SSLCertVerificationError as exc:
        say(f"FAILED: TLS certificate verification: {exc.verify_message or exc} "
            "(a private CA needs ca_file; the host name must match the certificate)")
        return EX_TEMPFAIL
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        say(f"FAILED: cannot connect: {type(exc).__name__}: {exc}")
        return EX_TEMPFAIL
    except Exception as exc:  # protocol errors from either client, aioimaplib's own exceptions
        say(f"FAILED: {type(exc).__name__}: {exc}")
        return EX_TEMPFAIL
    say("ok")
    return 0


async def _test_imap(cfg: ImapConfig, say: Say) -> None:
    client, starttls = imap_intake.connect_client(cfg)
    try:
        await client.call(client.wait_hello_from_server(), "greeting")
        say("connected" + (f": {client.tls_info()}, certificate verified" if client.tls_info() else " (plaintext)"))
        if starttls is not None:
            await client.starttls(starttls)
            say(f"STARTTLS: {client.tls_info()}, certificate verified")
        if cfg.tls == "none":
            say("warning: tls: none — the password crosses the network in clear text")
        if cfg.oauth2 is not None:
            token = await TokenSource(cfg.oauth2, what=cfg.name).token()
            say(f"oauth2: access token from {cfg.oauth2.token_url} "
                f"({'refresh_token' if cfg.oauth2.has_refresh_token else 'client_credentials'} grant)")
            await client.open_oauth2(cfg.user, token)
            say(f"login: ok as {cfg.user} (XOAUTH2)")
        else:
            await client.open_authenticated(cfg.user, cfg.password())
            say(f"login: ok as {cfg.user}")
        caps = client.capabilities
        say("capabilities: " + " ".join(sorted(caps)))
        resp = await client.ok(client.select(imap_intake.quoted(cfg.folder)), f"SELECT {cfg.folder}")
        uidvalidity, exists = imap_intake.select_info(resp.lines)
        access = "read-write" if any(b"READ-WRITE" in bytes(x) for x in resp.lines if isinstance(x, bytes)) \
            else "READ-ONLY (the gateway cannot flag or move: fix the account's rights)"
        say(f"folder {cfg.folder}: {exists} messages, UIDVALIDITY {uidvalidity}, {access}")
        criteria = imap_intake.search_criteria(cfg)
        found = await client.ok(client.uid_search(criteria, charset=None), "UID SEARCH")
        say(f"new messages ({criteria}, after: {cfg.after}): {len(imap_intake.parse_search(found.lines))}")
        if cfg.idle and "IDLE" in caps:
            say(f"push: IDLE (re-issued every {min(cfg.idle_renew, imap_intake.IDLE_RENEW_MAX):g}s)")
        else:
            say(f"push: none — polling every {cfg.poll_interval:g}s"
                + ("" if cfg.idle else " (idle: false)"))
        if cfg.after.startswith("move:"):
            say("after: " + ("UID MOVE" if "MOVE" in caps else "COPY + \\Deleted + EXPUNGE (no MOVE)")
                + f" to {cfg.after[5:]} (created if missing)")
        elif cfg.after == "delete":
            say("after: \\Deleted + " + ("UID EXPUNGE" if "UIDPLUS" in caps
                                          else "EXPUNGE (no UIDPLUS: also expunges what others marked \\Deleted)"))
    finally:
        await client.close_gracefully()


async def _test_pop3(cfg: Pop3Config, say: Say) -> None:
    client, starttls = pop_intake.connect_client(cfg)
    try:
        greeting = await client.connect()
        say(f"connected: {greeting}" + (f" ({client.tls_info()}, certificate verified)" if client.tls_info() else ""))
        caps = await client.capa()
        if starttls is not None:
            await client.stls(starttls)
            caps = client.capabilities
            say(f"STLS: {client.tls_info()}, certificate verified")
        if cfg.tls == "none":
            say("warning: tls: none — the password crosses the network in clear text")
        say("capabilities: " + (" ".join(sorted(caps)) or "(no CAPA)"))
        await client.login(cfg.user, cfg.password())
        say(f"login: ok as {cfg.user}")
        count, size = await client.stat()
        uidl = await client.uidl()
        sizes = await client.list()
        over = sum(1 for s in sizes.values() if s > cfg.max_message_size)
        say(f"new messages: {count} ({size} bytes)" + (f", {over} over max_message_size" if over else ""))
        say("UIDL: " + ("yes" if uidl is not None else "NO — messages are recognised by content hash after download"))
        await client.quit()
    finally:
        client.abort()
