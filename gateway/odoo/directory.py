"""DirectorySync: keeps the alias directory (routing/directory.py) in step with each Odoo instance.

Fetches `mail.alias.domain` and `mail.alias` (docs/odoo.md §10.7) — or, for Odoo ≤16, which has no alias
domains, the catchall ICPs — on a timer per instance and on `refresh()` (SIGHUP). Each successful fetch swaps
in a new immutable snapshot, notifies subscribers and rewrites ``<state_dir>/directory.json`` atomically, so
that a restart while Odoo is down still knows every alias. A failed fetch keeps the previous snapshot of
that instance: stale aliases are better than refusing all mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.errors import GatewayError
from gateway.logs import get_logger
from gateway.odoo.client import OdooClient, OdooConfigError, OdooRefusedError
from routing.address import normalize_address
from routing.directory import Alias, AliasDomain, Directory, InstanceDirectory

log = get_logger("mailgw.directory")

CACHE_NAME = "directory.json"
DOMAIN_FIELDS = ["name", "sequence", "company_ids", "bounce_alias", "bounce_email", "catchall_alias",
                 "catchall_email", "default_from", "default_from_email"]
ALIAS_FIELDS = ["alias_name", "alias_full_name", "alias_domain_id", "alias_domain", "alias_model_id",
                "alias_defaults", "alias_force_thread_id", "alias_parent_model_id", "alias_parent_thread_id",
                "alias_contact", "alias_incoming_local", "alias_bounced_content", "alias_status"]
LEGACY_ALIAS_FIELDS = ["alias_name", "alias_model_id", "alias_defaults", "alias_force_thread_id",
                       "alias_parent_model_id", "alias_parent_thread_id", "alias_contact"]
ICP_KEYS = ["mail.catchall.domain.allowed", "mail.gateway.loop.minutes", "mail.gateway.loop.threshold"]
LEGACY_ICP_KEYS = ["mail.catchall.domain", "mail.catchall.alias", "mail.bounce.alias", "mail.default.from"]
_RETRY_FIRST = 5.0  # an instance never fetched is retried sooner than the refresh period


def cache_path(config: Config) -> Path:
    return config.state_dir / CACHE_NAME


def load_cached(config: Config, path: Path | None = None) -> Directory:
    """The cached snapshot restricted to configured instances; domain ownership always from config."""
    path = path or cache_path(config)
    names = {inst.name for inst in config.odoo}
    instances: list[InstanceDirectory] = []
    try:
        data = json.loads(path.read_text())
        instances = [d for d in Directory.from_dict(data).instances.values() if d.instance in names]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("directory.cache_unreadable", path=str(path), error=str(exc))
    return Directory.build(instances, config.domain_owner)


def write_cache(directory: Directory, path: Path) -> None:
    """tmp + fsync + rename + fsync(dir): the cache is either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(directory.to_dict(), indent=1, sort_keys=True).encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=".directory.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _m2o_id(value: Any) -> int | None:
    if isinstance(value, list | tuple) and value:
        return int(value[0])
    if isinstance(value, int) and not isinstance(value, bool) and value:
        return value
    return None


def _m2o_name(value: Any) -> str | None:
    if isinstance(value, list | tuple) and len(value) > 1 and value[1]:
        return str(value[1])
    return None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or value in (None, "", 0):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any, default: str = "") -> str:
    return default if value in (None, False) else str(value)


async def fetch_instance(client: OdooClient) -> InstanceDirectory:
    """One instance's directory, straight from Odoo. Raises TempFailure/ConfigProblem when Odoo fails."""
    if not client.server_version:
        await client.version()
    major = client.major_version
    legacy = client.config.legacy_directory or (major is not None and major <= 16)
    if legacy:
        domains, aliases, icp = await _fetch_legacy(client)
    else:
        domains, aliases, icp = await _fetch_modern(client)
    allowed = tuple(d.strip().lower() for d in _str(icp.get("mail.catchall.domain.allowed")).split(",") if d.strip())
    cfg = client.config
    loop_minutes = cfg.loop_minutes if cfg.loop_minutes is not None else \
        _int_or_default(icp.get("mail.gateway.loop.minutes"), 120)
    loop_threshold = cfg.loop_threshold if cfg.loop_threshold is not None else \
        _int_or_default(icp.get("mail.gateway.loop.threshold"), 20)
    loop_allowed: tuple[str, ...] = ()
    if not legacy:
        try:
            rows = await client.search_read("mail.gateway.allowed", [], ["email_normalized"], optional=True)
            loop_allowed = tuple(sorted({_str(r.get("email_normalized")).lower() for r in rows
                                         if r.get("email_normalized")}))
        except GatewayError as exc:
            if not _is_optional_miss(exc):
                raise
    return InstanceDirectory(
        instance=client.name,
        internal_users=await _internal_users(client),
        domains=tuple(domains),
        aliases=tuple(sorted(aliases, key=lambda a: (a.full_name, a.id))),
        allowed_domains=allowed,
        loop_minutes=loop_minutes,
        loop_threshold=loop_threshold,
        loop_allowed=loop_allowed,
        server_version=_str(client.server_version.get("server_version")),
        fetched_at=time.time(),
    )


async def _internal_users(client: OdooClient) -> tuple[str, ...]:
    """Normalised addresses of active internal users (`share` is False for them in every supported Odoo). An
    answer of "you may not read that" leaves the list empty: identity protection then covers fewer senders."""
    try:
        rows = await client.search_read("res.users", [["share", "=", False]], ["login", "email"], optional=True)
    except GatewayError as exc:
        if not _is_optional_miss(exc):
            raise
        log.info("directory.users_unreadable", instance=client.name, error=str(exc))
        return ()
    found = {addr for r in rows for f in ("email", "login") if "@" in (addr := normalize_address(_str(r.get(f))))}
    return tuple(sorted(found))


def _int_or_default(value: Any, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def _is_optional_miss(exc: GatewayError) -> bool:
    """An answer saying "you may not read that" or "no such model": an optional read simply has nothing."""
    return isinstance(exc, OdooRefusedError) or (isinstance(exc, OdooConfigError)
                                                  and exc.kind in ("rights", "endpoint", "request"))


async def _read_icps(client: OdooClient, keys: list[str]) -> dict[str, str]:
    try:
        rows = await client.search_read("ir.config_parameter", [["key", "in", keys]], ["key", "value"],
                                        optional=True)
    except GatewayError as exc:
        if not _is_optional_miss(exc):
            raise
        log.info("directory.icp_unreadable", instance=client.name, error=str(exc))
        return {}
    return {str(r.get("key")): _str(r.get("value")) for r in rows}


async def _model_names(client: OdooClient, rows: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    ids = sorted({i for r in rows for f in ("alias_model_id", "alias_parent_model_id")
                  if (i := _m2o_id(r.get(f))) is not None})
    if not ids:
        return {}
    return {int(r["id"]): str(r["model"]) for r in await client.read("ir.model", ids, ["model"])}


def _alias(row: Mapping[str, Any], models: Mapping[int, str], domain: str | None, *, incoming_local: bool,
           status: str) -> Alias | None:
    name = _str(row.get("alias_name")).strip().lower()
    model_id = _m2o_id(row.get("alias_model_id"))
    if not name or model_id is None:
        return None
    parent_id = _m2o_id(row.get("alias_parent_model_id"))
    contact = _str(row.get("alias_contact"), "everyone")
    return Alias(
        id=int(row["id"]),
        name=name,
        domain=domain,
        model=models.get(model_id, _m2o_name(row.get("alias_model_id")) or ""),
        force_thread_id=_int_or_none(row.get("alias_force_thread_id")),
        parent_model=models.get(parent_id) if parent_id is not None else None,
        parent_thread_id=_int_or_none(row.get("alias_parent_thread_id")),
        contact=contact if contact in ("everyone", "partners", "followers") else "everyone",  # type: ignore[arg-type]
        incoming_local=incoming_local,
        status=status,
        defaults=_str(row.get("alias_defaults"), "{}") or "{}",
    )


async def _fetch_modern(client: OdooClient) -> tuple[list[AliasDomain], list[Alias], dict[str, str]]:
    drows = await client.search_read("mail.alias.domain", [], DOMAIN_FIELDS, order="sequence asc, id asc")
    domains = [
        AliasDomain(
            id=int(r["id"]),
            name=_str(r.get("name")),
            bounce_alias=_str(r.get("bounce_alias")),
            catchall_alias=_str(r.get("catchall_alias")),
            default_from=_str(r.get("default_from")),
            company_ids=tuple(int(c) for c in (r.get("company_ids") or [])),
            sequence=int(r.get("sequence") or 0),
        )
        for r in drows
    ]
    by_id = {d.id: d.name for d in domains}
    arows = await client.search_read("mail.alias", [["alias_name", "!=", False]], ALIAS_FIELDS)
    models = await _model_names(client, arows)
    aliases = []
    for r in arows:
        dom_id = _m2o_id(r.get("alias_domain_id"))
        domain = by_id.get(dom_id) if dom_id is not None else None
        if dom_id is not None and domain is None:
            domain = _str(r.get("alias_domain")) or _m2o_name(r.get("alias_domain_id"))
        alias = _alias(r, models, domain or None, incoming_local=bool(r.get("alias_incoming_local")),
                       status=_str(r.get("alias_status"), "not_tested"))
        if alias is not None:
            aliases.append(alias)
    return domains, aliases, await _read_icps(client, ICP_KEYS)


async def _fetch_legacy(client: OdooClient) -> tuple[list[AliasDomain], list[Alias], dict[str, str]]:
    """Odoo ≤16: one catchall domain from ICPs; aliases match by local part on it (any domain if unset)."""
    icp = await _read_icps(client, LEGACY_ICP_KEYS + ICP_KEYS)
    catchall_domain = icp.get("mail.catchall.domain", "").strip()
    if not catchall_domain and not icp:
        # ICPs unreadable (not an admin): assume the first configured mail domain.
        catchall_domain = client.config.domains[0]
        log.warning("directory.legacy_domain_assumed", instance=client.name, domain=catchall_domain)
    domains = []
    if catchall_domain:
        domains.append(AliasDomain(
            id=0, name=catchall_domain,
            bounce_alias=icp.get("mail.bounce.alias") or "bounce",
            catchall_alias=icp.get("mail.catchall.alias") or "catchall",
            default_from=icp.get("mail.default.from") or "notifications",
        ))
    arows = await client.search_read("mail.alias", [["alias_name", "!=", False]], LEGACY_ALIAS_FIELDS)
    models = await _model_names(client, arows)
    aliases = [a for r in arows if (a := _alias(r, models, catchall_domain or None,
                                                 incoming_local=not catchall_domain, status="valid")) is not None]
    return domains, aliases, icp


class DirectorySync:
    """Holds the current Directory; refreshes it per instance on a timer and on demand."""

    def __init__(self, config: Config, clients: Mapping[str, OdooClient], *, path: Path | None = None):
        self.config = config
        self.clients = dict(clients)
        self.path = path or cache_path(config)
        self._current = load_cached(config, self.path)
        self._subscribers: list[Callable[[Directory], None]] = []
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        if self._current.instances:
            log.info("directory.cache_loaded", path=str(self.path), instances=sorted(self._current.instances),
                     aliases=sum(len(d.aliases) for d in self._current.instances.values()))

    @property
    def current(self) -> Directory:
        return self._current

    def subscribe(self, callback: Callable[[Directory], None]) -> None:
        """`callback(directory)` after every swap."""
        self._subscribers.append(callback)

    async def refresh(self, names: Sequence[str] | None = None) -> dict[str, str | None]:
        """Fetch now (all instances, or `names`); returns instance -> error text (None when fetched)."""
        targets = [n for n in (names or list(self.clients)) if n in self.clients]
        results = await asyncio.gather(*(self._fetch(n) for n in targets), return_exceptions=True)
        fresh: list[InstanceDirectory] = []
        report: dict[str, str | None] = {}
        for name, res in zip(targets, results, strict=True):
            if isinstance(res, InstanceDirectory):
                fresh.append(res)
                report[name] = None
            elif isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                report[name] = str(res) or type(res).__name__
                log.warning("directory.refresh_failed", instance=name, error=report[name],
                            cached=self._current.is_ready(name))
        if fresh:
            await self._swap(fresh)
        return report

    async def _fetch(self, name: str) -> InstanceDirectory:
        return await fetch_instance(self.clients[name])

    async def _swap(self, fresh: Sequence[InstanceDirectory]) -> None:
        async with self._lock:
            new = self._current
            for inst in fresh:
                old = new.instances.get(inst.instance)
                if old is None or _content(old) != _content(inst):
                    log.info("directory.updated", instance=inst.instance, domains=len(inst.domains),
                             aliases=len(inst.aliases), server_version=inst.server_version)
                new = new.with_instance(inst)
            new = Directory.build(new.instances.values(), self.config.domain_owner)
            self._current = new
            # Subscribers (the router) first: the cache file on disk then means "the gateway routes with it",
            # which is what an operator or a test waiting for the file expects.
            for cb in list(self._subscribers):
                try:
                    cb(new)
                except Exception:
                    log.exception("directory.subscriber_failed")
            await asyncio.to_thread(write_cache, new, self.path)

    async def start(self) -> None:
        """Timer per instance. Call after the clients were created (the first refresh runs at once)."""
        for name in self.clients:
            self._tasks.append(asyncio.get_running_loop().create_task(self._timer(name),
                                                                      name=f"directory-{name}"))

    async def _timer(self, name: str) -> None:
        period = self.clients[name].config.directory_refresh
        delay = 0.0
        while True:
            await asyncio.sleep(delay)
            report = await self.refresh([name])
            if report.get(name) is None:
                delay = period
            else:
                delay = min(period, max(_RETRY_FIRST, delay * 2)) if not self._current.is_ready(name) else period

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


def _content(inst: InstanceDirectory) -> dict[str, Any]:
    data = inst.to_dict()
    data.pop("fetched_at", None)
    return data
