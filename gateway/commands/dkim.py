"""`mailgw dkim keygen DOMAIN SELECTOR`: a new DKIM signing key, and the DNS record to publish for it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gateway.commands import SubParsers
from gateway.exitcodes import EX_CANTCREAT, EX_USAGE

ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}


def register(sub: SubParsers) -> None:
    p = sub.add_parser("dkim", help="DKIM signing keys",
                       description="DKIM signing keys for outbound mail.")
    dsub = p.add_subparsers(dest="dkim_command", metavar="ACTION")
    gen = dsub.add_parser(
        "keygen", help="write a new signing key and print its DNS record",
        description="Write a new DKIM private key (mode 0600) and print the TXT record to publish at "
        "SELECTOR._domainkey.DOMAIN and the outbound.dkim entry for config.yaml. Publish the record, check it "
        "with `mailgw dns-check DOMAIN`, then add the entry and reload. For dual signatures (RFC 8463) run it "
        "twice with two selectors: once --algorithm rsa, once --algorithm ed25519.")
    gen.add_argument("domain")
    gen.add_argument("selector")
    gen.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="rsa",
                     help="rsa (RFC 6376, every receiver) or ed25519 (RFC 8463, sign with both); default rsa")
    gen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    gen.add_argument("--key-file", type=Path, help="where to write the key (default: SELECTOR.DOMAIN.key "
                     "in the current directory)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    gen.set_defaults(func=_keygen)
    p.set_defaults(func=lambda a: (p.print_help(), EX_USAGE)[1])


def _keygen(args: argparse.Namespace) -> int:
    from gateway.outbound.dkim import generate_key, write_key_file, zone_line

    domain = args.domain.strip().lower().rstrip(".")
    selector = args.selector.strip()
    if not domain or not selector or "." in selector.strip("."):
        print("a domain and a selector (one DNS label) are needed", file=sys.stderr)
        return EX_USAGE
    try:
        key = generate_key(args.algorithm, args.bits)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return EX_USAGE
    path: Path = args.key_file or Path(f"{selector}.{domain}.key")
    try:
        write_key_file(path, key.private, force=args.force)
    except FileExistsError:
        print(f"{path} exists: choose another --key-file, or --force to replace it", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"cannot write {path}: {exc.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    print(f"; key written to {path} (mode 0600); publish this record:")
    print(zone_line(selector, domain, key.record))
    print("; then, in config.yaml under outbound.dkim:")
    print(f"; - {{domain: {domain}, selector: {selector}, key_file: {path.resolve()}, "
          f"algorithm: {ALGORITHMS[args.algorithm]}}}")
    return 0
