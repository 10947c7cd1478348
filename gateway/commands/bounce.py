"""`mailgw bounce parse FILE.eml [--json]` and `mailgw bounce score DIR`.

`parse` reads one message and says whether it is a bounce, an auto-reply or a feedback report, which
recipients failed, why (Sisimai's reasons) and whether the address is dead (hard). With `-c CONFIG`
the VERP token of the address the bounce came back to is checked against the configured secret.

`score` runs the parser over a corpus of .eml files with an answer key (`answers.json`, see
docs/bounces.md), prints the score table and exits 1 when a score is below its floor. `--by-family`
adds a table per MTA family (from the file names), `--lofo` scores every file again with the detectors
and provider rules of its own family switched off (how the general rules alone do on a family they
were not written for), `--split dev|held` scores only one part of a fixed 70/30 split of the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bounce.dsn import BounceReport, parse
from bounce.scorecard import by_family, family_table, held_out, leave_one_out_parser, score
from gateway.commands import SubParsers
from gateway.config import ConfigError, load_config
from gateway.exitcodes import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_USAGE


def register(sub: SubParsers) -> None:
    p = sub.add_parser("bounce", help="parse a bounce, or score the bounce parser on a corpus",
                       description="Bounce tools: parse one message, or score the parser on a corpus.")
    inner = p.add_subparsers(dest="bounce_command", metavar="SUBCOMMAND")
    pp = inner.add_parser("parse", help="classify one message (bounce, auto-reply, feedback report)",
                          description="Print what the gateway makes of a message: bounce or not, the failed "
                          "recipients in report order with status, reply code, reason and hard/soft.")
    pp.add_argument("file", metavar="FILE.eml", help="the message; - for stdin")
    pp.add_argument("--json", action="store_true", help="print one JSON object")
    pp.add_argument("-c", "--config", default=argparse.SUPPRESS,
                    help="config file whose bounce.verp_secret checks VERP tokens (optional)")
    pp.set_defaults(func=run_parse)
    ps = inner.add_parser("score", help="score the parser on a directory of .eml files with answers.json",
                          description="Score the parser on DIR (its .eml files in DIR/eml/ or DIR itself, "
                          "the answer key in DIR/answers.json). Exit 1 when below the floors.")
    ps.add_argument("dir", metavar="DIR")
    ps.add_argument("--misses", action="store_true", help="also list every row that was not right")
    ps.add_argument("--reasons", action="store_true", help="also print the score per reason")
    ps.add_argument("--by-family", action="store_true",
                    help="also print the scores per MTA family (the file name's <kind>-<engine> part)")
    ps.add_argument("--lofo", action="store_true",
                    help="also score leave-one-family-out: each file with its own family's detectors and "
                    "provider rules switched off")
    ps.add_argument("--split", choices=("dev", "held"), default=None,
                    help="score only one part of a fixed split of the files (held: 30%% chosen by a hash "
                    "of the file name; dev: the rest)")
    ps.set_defaults(func=run_score)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return EX_USAGE


def run_parse(args: argparse.Namespace) -> int:
    secret = None
    if args.config_given:
        try:
            secret = load_config(args.config).bounce.verp_secret()
        except ConfigError as exc:
            for line in exc.errors:
                print(f"{args.config}: {line}", file=sys.stderr)
            return EX_CONFIG
    try:
        raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as exc:
        print(f"mailgw bounce parse: {args.file}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    report = parse(raw, verp_secret=secret)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(summary(report))
    return 0


def summary(report: BounceReport) -> str:
    """A readable account of a report."""
    if report.is_bounce:
        kind = "bounce"
    elif report.is_feedback:
        kind = f"feedback report ({report.feedback_type})"
    elif report.is_auto_reply:
        kind = "auto-reply (not a bounce)"
    elif report.recipients:
        kind = "delivery report (delivered, not a bounce)"
    else:
        kind = "not a bounce"
    lines = [f"kind:                {kind}"]
    if report.original_message_id:
        lines.append(f"original message-id: {report.original_message_id}")
    if report.reporting_mta:
        lines.append(f"reporting MTA:       {report.reporting_mta}")
    if report.verp is not None:
        state = "valid" if report.verp.valid else "INVALID MAC (forged or no secret given)"
        lines.append(f"VERP:                queue {report.verp.queue_id}, recipient #{report.verp.rcpt_index}, "
                     f"{state}")
    for n, r in enumerate(report.recipients, 1):
        codes = " ".join(c for c in (r.status, r.reply_code) if c)
        lines.append(f"recipient {n}:         {r.address}  {r.action or '-'}  {codes or '-'}  "
                     f"{r.reason}  ({r.kind})")
        if r.diagnostic:
            lines.append(f"    {r.diagnostic[:300]}")
    return "\n".join(lines)


def _corpus(directory: Path) -> dict[str, bytes]:
    folder = directory / "eml" if (directory / "eml").is_dir() else directory
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.eml"))}


def run_score(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    try:
        answers = json.loads((directory / "answers.json").read_text())
        files = _corpus(directory)
    except OSError as exc:
        print(f"mailgw bounce score: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EX_NOINPUT
    except ValueError as exc:
        print(f"mailgw bounce score: answers.json: {exc}", file=sys.stderr)
        return EX_DATAERR
    if not isinstance(answers, list) or not files:
        print("mailgw bounce score: need answers.json (a list of rows) and .eml files", file=sys.stderr)
        return EX_DATAERR
    if args.split is not None:
        files = {name: raw for name, raw in files.items() if held_out(name) == (args.split == "held")}
        print(f"split: {args.split} ({len(files)} files)")
    card = score(files, answers)
    print(card.table())
    lofo = score(files, answers, parser_for=leave_one_out_parser) if args.lofo else None
    if lofo is not None:
        print("\nleave one family out (each family without its own detectors and provider rules):")
        print(lofo.table())
    if args.by_family:
        plain = by_family(files, answers)
        print("\nper family (per cent):")
        if args.lofo:
            print(family_table(by_family(files, answers, leave_one_out_parser), plain))
        else:
            print(family_table(plain))
    if args.reasons:
        print("per reason:")
        print(card.reason_table())
    if args.misses:
        for line in card.misses:
            print(f"  {line}")
    low = card.below_floors()
    for line in low:
        print(f"BELOW FLOOR: {line}", file=sys.stderr)
    return 1 if low else 0
