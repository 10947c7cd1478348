"""MTA-STS (RFC 8461): a recipient domain's promise that its MX hosts take TLS with a valid certificate.

For direct MX delivery only (a relay applies its own policy). Per domain: the ``_mta-sts`` TXT record (its
`id` says when the policy changed), then the policy itself over HTTPS from ``mta-sts.<domain>`` — the host is
resolved with the gateway's resolver and its certificate must be valid for that name; redirects are not
followed (§3.3). Policies are cached for their `max_age` in ``<state_dir>/mta-sts.json`` so that a restart
or an attacker removing the TXT record does not lose them (§5.1).

What the sender does with a policy (gateway/outbound/sender.py): `enforce` — only MX hosts that match the
policy, only with STARTTLS and a certificate valid for the MX name, else the message waits (4.7.5) and
finally expires; `testing` — delivery as without a policy, failures only counted for TLS-RPT; `none` or no
policy — opportunistic TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from gateway.config import MtaStsConfig
from gateway.logs import get_logger
from gateway.outbound.mx import MxResolver, TemporaryDnsError

log = get_logger("mailgw.outbound")

MAX_POLICY_BYTES = 64 * 1024  # §3.3: senders may refuse larger policies
MAX_AGE_LIMIT = 31_557_600  # §3.2: one year
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")

Mode = Literal["enforce", "testing", "none"]


class StsFetchError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class StsPolicy:
    domain: str
    policy_id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def matches(self, host: str) -> bool:
        """§4.1: an `mx` pattern is a host name or ``*.`` plus a domain, which matches one extra left label."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                if "." in host and host.split(".", 1)[1] == pattern[2:]:
                    return True
            elif host == pattern:
                return True
        return False

    def lines(self) -> list[str]:
        """The policy as TLS-RPT's `policy-string` (one entry per line)."""
        return ["version: STSv1", f"mode: {self.mode}", *(f"mx: {m}" for m in self.mx),
                f"max_age: {self.max_age}"]


@dataclass(frozen=True, slots=True)
class PolicyLookup:
    policy: StsPolicy | None
    error: str | None = None  # why a published policy could not be used (sts-policy-fetch-error)


def parse_policy(text: str, domain: str, policy_id: str, now: float) -> StsPolicy:
    """The policy file (§3.2): ``key: value`` lines; version, mode and max_age required, mx for enforce/testing."""
    fields: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsFetchError(f"policy line {line[:60]!r} is not 'key: value'")
        fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise StsFetchError("policy version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise StsFetchError(f"policy mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise StsFetchError("policy max_age is not a number") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise StsFetchError(f"policy max_age {max_age} is out of range")
    mx = tuple(m.lower().rstrip(".") for m in fields.get("mx", []))
    if mode != "none" and not mx:
        raise StsFetchError(f"policy mode {mode} names no mx")
    return StsPolicy(domain, policy_id, mode, mx, max_age, now)  # type: ignore[arg-type]


class MtaSts:
    def __init__(self, cfg: MtaStsConfig, resolver: MxResolver, cache_path: Path | None = None,
                 clock: Callable[[], float] = time.time, *, tls: ssl.SSLContext | None = None):
        self.cfg = cfg
        self.resolver = resolver
        self.cache_path = cache_path
        self.clock = clock
        # The sender passes the context it verifies MX certificates with: the same trust (cfg.ca_file or the
        # system's CAs), and loading a CA store costs ~20 ms.
        self.tls = tls or ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        self._cache: dict[str, StsPolicy] = self._load()
        self._locks: dict[str, asyncio.Lock] = {}

    async def policy(self, domain: str) -> PolicyLookup:
        """The policy to apply to `domain` now (§5): the published one, the cached one, or none."""
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one fetch per domain at a time, however many messages wait for it
            result = await self._policy(domain)
        if len(self._locks) > 1000:  # forget the locks nobody holds
            self._locks = {d: lk for d, lk in self._locks.items() if lk.locked()}
        return result

    async def _policy(self, domain: str) -> PolicyLookup:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached.expires_at <= now:
            cached = None
        try:
            policy_id = await self._record_id(domain)
        except TemporaryDnsError:
            return PolicyLookup(cached)  # the record cannot be read now: a cached policy holds (§5.1)
        if policy_id is None:
            return PolicyLookup(cached)  # no record (any more): a cached policy still holds until it expires
        if cached is not None and cached.policy_id == policy_id:
            return PolicyLookup(cached)
        try:
            text = await self._fetch(domain)
            policy = parse_policy(text, domain, policy_id, now)
        except (StsFetchError, OSError, TimeoutError, ssl.SSLError, TemporaryDnsError) as exc:
            reason = f"MTA-STS policy of {domain} could not be fetched: {exc}"
            log.warning("outbound.mta_sts_fetch_failed", domain=domain, error=str(exc), cached=cached is not None)
            return PolicyLookup(cached, reason)
        self._cache[domain] = policy
        self._save()
        log.info("outbound.mta_sts_policy", domain=domain, mode=policy.mode, mx=list(policy.mx),
                 max_age=policy.max_age, id=policy_id)
        return PolicyLookup(policy)

    async def _record_id(self, domain: str) -> str | None:
        """The id of the one valid ``v=STSv1`` record, or None (none, several, or malformed: §3.1)."""
        texts = await self.resolver.txt(f"_mta-sts.{domain}") or []
        records = [t for t in texts if t.replace(" ", "").startswith("v=STSv1")]
        if len(records) != 1:
            return None
        tags = dict(part.strip().partition("=")[::2] for part in records[0].split(";") if "=" in part)
        policy_id = tags.get("id", "").strip()
        return policy_id if _ID.match(policy_id) else None

    async def _fetch(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        addresses = await self.resolver.addresses(host)
        if not addresses:
            raise StsFetchError(f"{host} does not resolve")
        error: Exception = StsFetchError(f"{host}: no address answered")
        for address in addresses:
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    return await self._get(address, host)
            except StsFetchError:
                raise
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                error = exc
        raise error

    async def _get(self, address: str, host: str) -> str:
        reader, writer = await asyncio.open_connection(address, self.cfg.https_port, ssl=self.tls,
                                                       server_hostname=host)
        try:
            # HTTP/1.0: the answer is the body up to the end of the connection, never chunked.
            writer.write(f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mailgw\r\n"
                         f"Accept: text/plain\r\n\r\n".encode("ascii"))
            await writer.drain()
            data = b""
            while len(data) <= MAX_POLICY_BYTES + 16384:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise StsFetchError("no complete HTTP answer")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise StsFetchError(f"HTTP status {status_line[:60]!r} (redirects are not followed)")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        if not headers.get("content-type", "").lower().startswith("text/plain"):
            raise StsFetchError(f"content type {headers.get('content-type', '')!r} is not text/plain")
        if len(body) > MAX_POLICY_BYTES:
            raise StsFetchError(f"policy larger than {MAX_POLICY_BYTES} bytes")
        return body.decode("utf-8", "replace")

    # -- cache -------------------------------------------------------------------------------------------------

    def _load(self) -> dict[str, StsPolicy]:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            data = json.loads(self.cache_path.read_text())
            return {d: StsPolicy(**{**p, "mx": tuple(p["mx"])}) for d, p in data.items()}
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("outbound.mta_sts_cache_unreadable", path=str(self.cache_path), error=str(exc))
            return {}

    def _save(self) -> None:
        if self.cache_path is None:
            return
        now = self.clock()
        data = {d: asdict(p) for d, p in self._cache.items() if p.expires_at > now}
        tmp = self.cache_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("outbound.mta_sts_cache_unwritable", path=str(self.cache_path), error=str(exc))
