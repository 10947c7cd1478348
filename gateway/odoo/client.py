"""OdooClient: one Odoo instance behind one interface, whichever API (`xmlrpc` or `json2`) it speaks.

It authenticates once, keeps connections alive, bounds concurrent calls (`max_concurrency`), times out
every call, and turns every failure into one of the gateway's three kinds, following the fault table of
docs/odoo.md §3 and §10.7:

=====================================  =================================  ===============================
Odoo says                              XML-RPC / JSON-2                   we raise
=====================================  =================================  ===============================
no route                               fault 1 / 500 ValueError           NoRouteError (PermFailure)
unknown model / no gateway support     fault 1 / 500 "Mailbox unavail."  OdooRefusedError (PermFailure)
alias crash, UserError/ValidationError fault 2 / 422                      OdooRefusedError (PermFailure)
bad login/key                          fault 3 / 401                      OdooConfigError (ConfigProblem)
rights, private method                 fault 4 / 403                      OdooConfigError (ConfigProblem)
database does not exist                fault 1 psycopg2 / 404             OdooConfigError (ConfigProblem)
serialization failure, lock            fault 1 / 409, 500                 OdooTempError (TempFailure)
proxy/overload                         HTTP 429, 5xx                      OdooTempError (TempFailure)
refused, reset, timeout                —                                  TransportError (TempFailure)
=====================================  =================================  ===============================

`message_process` results: an id (posted), `False` (duplicate / bounce / refusal: final) and the loop
guard's `None` (XML-RPC fault 1 "cannot marshal None", JSON-2 `null`: committed, final) come back as a
`ProcessResult`; nothing about them is an error.
"""

from __future__ import annotations

import asyncio
import time
import xmlrpc.client
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import ConfigError, OdooConfig
from gateway.errors import ConfigProblem, GatewayError, PermFailure, TempFailure
from gateway.logs import get_logger
from gateway.odoo.breaker import BreakerOpenError, CircuitBreaker
from gateway.odoo.headers import json_safe_message
from gateway.odoo.transport import (
    HttpConnectionPool,
    Json2Transport,
    RpcFault,
    RpcTransport,
    XmlRpcTransport,
)

log = get_logger("mailgw.odoo")

MESSAGE_FIELDS = ["id", "model", "res_id", "message_id", "message_type", "date"]
_SERIALIZATION_MARKERS = (
    "could not serialize access", "serializationfailure", "deadlock detected", "locknotavailable",
    "transactionrollbackerror", "concurrent update", "could not obtain lock",
)


class OdooTempError(TempFailure):
    """Odoo answered but the call may succeed later (5xx, 429, serialization failure, unknown server error)."""

    def __init__(self, message: str, *, kind: str = "server_error"):
        super().__init__(message)
        self.kind = kind


class OdooConfigError(ConfigProblem):
    """Credentials, rights, database or endpoint are wrong: mail waits, an operator must act."""

    def __init__(self, message: str, *, kind: str = "config"):
        super().__init__(message)
        self.kind = kind


class NoRouteError(PermFailure):
    """Odoo found no route for the message (mailgate's EX_NOUSER)."""


class OdooRefusedError(PermFailure):
    """Odoo refused the message for good. `sender_notified`: Odoo already sent its own refusal."""

    def __init__(self, message: str, *, sender_notified: bool = False):
        super().__init__(message)
        self.sender_notified = sender_notified


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """What `message_process` returned: ``posted`` (an id), ``false`` or ``dropped`` (loop guard None)."""

    outcome: Literal["posted", "false", "dropped"]
    record_id: int | None = None

    @property
    def reason(self) -> str:
        if self.outcome == "posted":
            return f"posted on record {self.record_id}"
        if self.outcome == "false":
            return "Odoo returned False: duplicate Message-Id, handled bounce, or refused by alias/catchall policy"
        return "Odoo's loop guard dropped it (returned None): reply to a loop notice or too many mails"


def classify(fault: RpcFault, *, instance: str, model: str = "", method: str = "") -> GatewayError:
    """Map an Odoo error answer to TempFailure / PermFailure / ConfigProblem (see the module table)."""
    what = f"odoo {instance}: {model}.{method}" if model else f"odoo {instance}"
    text = fault.text.lower()
    status, code, xml = fault.http_status, fault.code, fault.protocol == "xmlrpc"
    brief = fault.message or fault.name or f"HTTP {status}"
    if "no possible route" in text:
        return NoRouteError(f"{what}: {brief}")
    if "mailbox unavailable" in text:
        return OdooRefusedError(f"{what}: {brief}")
    if "database" in text and ("does not exist" in text or "not found" in text) and status in (200, 404, 500):
        return OdooConfigError(f"{what}: database {brief}", kind="database")
    if any(marker in text for marker in _SERIALIZATION_MARKERS) or (not xml and status == 409):
        return OdooTempError(f"{what}: {brief}", kind="serialization")
    if status == 429 or (status >= 500 and not fault.name):
        return OdooTempError(f"{what}: HTTP {status} {fault.detail[:200]}".strip(), kind="http")
    if (xml and status == 200 and code == 3) or status == 401:
        return OdooConfigError(f"{what}: access denied (check login and password/API key)", kind="auth")
    if (xml and status == 200 and code == 4) or status == 403:
        return OdooConfigError(f"{what}: access error: {brief}", kind="rights")
    if (xml and status == 200 and code == 2) or (status == 422 and fault.name.endswith(("Error", "Warning"))
                                                    and "odoo.exceptions" in fault.name):
        # From message_process this is a broken alias: Odoo already sent the sender an "invalid alias" mail.
        return OdooRefusedError(f"{what}: {brief}", sender_notified=method == "message_process")
    if status == 404:
        return OdooConfigError(f"{what}: not found ({brief}): wrong URL, database or Odoo version?",
                               kind="endpoint")
    if 400 <= status < 500:
        return OdooConfigError(f"{what}: request refused, HTTP {status}: {brief}", kind="request")
    # Fault 1 / HTTP 500 with an exception we do not know: assume the server's trouble, retry.
    return OdooTempError(f"{what}: {fault.name + ': ' if fault.name else ''}{brief}", kind="server_error")


def _is_none_fault(fault: RpcFault) -> bool:
    return fault.protocol == "xmlrpc" and fault.code == 1 and "cannot marshal none" in fault.text.lower()


class _TtlCache:
    """Bounded LRU with a time-to-live: reply lookups repeat for every mail of a busy thread."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl, self._clock = size, ttl, clock
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> tuple[bool, Any]:
        hit = self._data.get(key)
        if hit is None:
            return False, None
        if hit[0] < self._clock():
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, hit[1]

    def put(self, key: Any, value: Any) -> None:
        if self.size <= 0 or self.ttl <= 0:
            return
        self._data[key] = (self._clock() + self.ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class UnconfiguredTransport:
    """Stands in for a transport whose secret could not be read: every call fails as a config problem."""

    def __init__(self, protocol: str, reason: str):
        self.protocol = protocol
        self.reason = reason
        self.uid: int | None = None

    async def version(self) -> dict[str, Any]:
        raise OdooConfigError(self.reason, kind="secret")

    async def authenticate(self) -> int:
        raise OdooConfigError(self.reason, kind="secret")

    async def call(self, model: str, method: str, args: list[Any], kwargs: Mapping[str, Any], *,
                   names: tuple[str, ...] = (), timeout: float | None = None) -> Any:
        raise OdooConfigError(self.reason, kind="secret")

    async def close(self) -> None:
        return None


class OdooClient:
    """One configured Odoo instance. Create, `await start()`, call, `await close()`."""

    def __init__(self, config: OdooConfig, *, secret: str | None = None, breaker_threshold: int = 5,
                 breaker_cooldown: float = 30.0, cache_size: int = 10000, cache_ttl: float = 3600.0,
                 transport: RpcTransport | None = None):
        self.config = config
        self.name = config.name
        self.timeout = config.timeout
        if transport is None:
            try:
                secret = config.password() if secret is None else secret
            except ConfigError as exc:
                # The daemon keeps running (mail spools, RCPT answers 451 without a directory); every call says
                # what is missing, as a config problem: deferred and loud, never a bounce.
                transport = UnconfiguredTransport(config.api, "; ".join(exc.errors))
            else:
                pool = HttpConnectionPool(config.url, size=config.max_concurrency, timeout=config.timeout)
                cls = XmlRpcTransport if config.api == "xmlrpc" else Json2Transport
                transport = cls(pool, config.database, config.login, secret)
        self.transport: RpcTransport = transport
        self.breaker = CircuitBreaker(config.name, threshold=breaker_threshold, cooldown=breaker_cooldown)
        self.breaker.subscribe(self._on_breaker)
        self._breaker_state = "closed"
        self.server_version: dict[str, Any] = {}
        self._messages = _TtlCache(cache_size, cache_ttl)
        self._outage: str | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._auth_lock = asyncio.Lock()
        self._authenticated = False
        self._closed = False

    def __repr__(self) -> str:
        return f"OdooClient(name={self.name!r}, api={self.config.api!r}, url={self.config.url!r})"

    @property
    def api(self) -> str:
        return self.transport.protocol

    @property
    def major_version(self) -> int | None:
        """server_version_info[0] as an int; SaaS builds say "saas~19", parsed defensively."""
        info = self.server_version.get("server_version_info") or []
        first = str(info[0]) if info else str(self.server_version.get("server_version", ""))
        digits = "".join(ch for ch in first.split(".")[0] if ch.isdigit())
        return int(digits) if digits else None

    # -- lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> bool:
        """Read the version and authenticate. False (logged, breaker fed) when Odoo is not reachable yet."""
        try:
            await self.version()
            await self._ensure_auth()
        except TempFailure as exc:
            self._failed(exc)
            return False
        except GatewayError as exc:
            log.error("odoo.start_failed", instance=self.name, error=str(exc))
            return False
        self._succeeded()
        return True

    async def version(self) -> dict[str, Any]:
        try:
            info = await self.transport.version()
        except RpcFault as fault:
            raise classify(fault, instance=self.name) from None
        if info != self.server_version:
            log.info("odoo.version", instance=self.name, api=self.api,
                     server_version=info.get("server_version"), server_version_info=info.get("server_version_info"))
        self.server_version = info
        return info

    async def _ensure_auth(self) -> None:
        if self._authenticated:
            return
        async with self._auth_lock:
            if self._authenticated:
                return
            try:
                uid = await self.transport.authenticate()
            except RpcFault as fault:
                raise classify(fault, instance=self.name, model="common", method="authenticate") from None
            self._authenticated = True
            log.info("odoo.authenticated", instance=self.name, api=self.api, login=self.config.login, uid=uid)

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except (asyncio.CancelledError, Exception):
                pass
        await self.transport.close()

    # -- calls ------------------------------------------------------------------------------------------

    async def call(self, model: str, method: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                   *, names: tuple[str, ...] = (), timeout: float | None = None, none_ok: bool = False,
                   optional: bool = False) -> Any:
        """execute_kw / JSON-2 call with breaker, timeout and error classification.

        `none_ok`: the method may return None, which XML-RPC turns into fault 1 "cannot marshal None"
        after the transaction committed; that fault then means "returned None".
        `optional`: an Odoo error answer (e.g. no right to read ICPs, model absent in this version) is raised
        but does not count as an outage.
        """
        self.breaker.check()
        try:
            await self._ensure_auth()
            result = await self.transport.call(model, method, list(args), kwargs or {}, names=names,
                                               timeout=timeout)
        except RpcFault as fault:
            if none_ok and _is_none_fault(fault):
                self._succeeded()
                return None
            if fault.protocol == "xmlrpc" and fault.code == 3:
                self._authenticated = False
            err = classify(fault, instance=self.name, model=model, method=method)
            if optional and not isinstance(err, OdooTempError):
                self._succeeded()  # Odoo answered: it is up
            else:
                self._record(err)
            raise err from None
        except TempFailure as exc:
            self._record(exc)
            raise
        self._succeeded()
        return result

    async def message_process(self, raw: bytes, *, model: str | None = None, thread_id: int | None = None,
                              custom_values: Mapping[str, Any] | None = None,
                              timeout: float | None = None) -> ProcessResult:
        """Deliver one message. Raises NoRouteError/OdooRefusedError, TempFailure or ConfigProblem."""
        kwargs: dict[str, Any] = {}
        if thread_id:
            kwargs["thread_id"] = int(thread_id)
        if custom_values:
            kwargs["custom_values"] = dict(custom_values)
        message: Any
        if self.api == "xmlrpc":
            message = xmlrpc.client.Binary(raw)  # bytes intact, 8-bit and all (docs/odoo.md §10.7)
        elif len(raw) > 256 * 1024:
            message = await asyncio.to_thread(json_safe_message, raw)
        else:
            message = json_safe_message(raw)
        result = await self.call("mail.thread", "message_process", [model or False, message], kwargs,
                                 names=("model", "message"), timeout=timeout, none_ok=True)
        return _process_result(result)

    async def search_read(self, model: str, domain: list[Any], fields: list[str], *, order: str | None = None,
                          limit: int | None = None, optional: bool = False) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"fields": fields}
        if order:
            kwargs["order"] = order
        if limit:
            kwargs["limit"] = limit
        rows = await self.call(model, "search_read", [domain], kwargs, names=("domain",), optional=optional)
        return list(rows or [])

    async def read(self, model: str, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        rows = await self.call(model, "read", [list(ids)], {"fields": fields}, names=("ids",))
        return list(rows or [])

    async def find_message(self, message_ids: Sequence[str]) -> dict[str, Any] | None:
        """Newest mail.message whose message_id is one of these (docs/odoo.md §10.7), cached with a TTL."""
        ids = tuple(dict.fromkeys(m.strip() for m in message_ids if m and m.strip()))
        if not ids:
            return None
        hit, value = self._messages.get(ids)
        if hit:
            return dict(value) if value else None
        rows = await self.search_read("mail.message", [["message_id", "in", list(ids)]], MESSAGE_FIELDS,
                                      order="id desc", limit=1)
        found = rows[0] if rows else None
        self._messages.put(ids, found)
        return dict(found) if found else None

    async def find_record(self, model: str, field: str, value: str) -> int | None:
        """Id of the `model` record whose `field` equals `value` (reference patterns), newest first."""
        rows = await self.search_read(model, [[field, "=", value]], ["id"], order="id desc", limit=1)
        return int(rows[0]["id"]) if rows else None

    # -- health -----------------------------------------------------------------------------------------

    def _record(self, exc: BaseException) -> None:
        if isinstance(exc, BreakerOpenError):
            return
        if isinstance(exc, TempFailure):
            self._failed(exc)
        else:
            self._succeeded()  # a permanent answer still proves Odoo is up

    def _failed(self, exc: BaseException) -> None:
        kind = getattr(exc, "kind", type(exc).__name__)
        if isinstance(exc, ConfigProblem):
            self._authenticated = self._authenticated and kind not in ("auth", "database")
        if self._outage != kind:
            # One line per outage (and per change of cause), not one per message.
            event = "odoo.config_problem" if isinstance(exc, ConfigProblem) else "odoo.unavailable"
            level = log.error if isinstance(exc, ConfigProblem) else log.warning
            level(event, instance=self.name, api=self.api, kind=kind, error=str(exc))
            self._outage = kind
        self.breaker.record_failure(str(exc))

    def _succeeded(self) -> None:
        if self._outage is not None:
            log.info("odoo.recovered", instance=self.name, api=self.api, after=self._outage)
            self._outage = None
        self.breaker.record_success()

    @property
    def outage(self) -> str | None:
        return self._outage

    def _on_breaker(self, state: str) -> None:
        previous, self._breaker_state = self._breaker_state, state
        if state == "closed":
            log.info("odoo.breaker", instance=self.name, state=state)
        elif state == "open" and previous == "closed":
            log.warning("odoo.breaker", instance=self.name, state=state, failures=self.breaker.failures,
                        cooldown=self.breaker.cooldown)
        else:  # probing and re-opening every cooldown: not worth a line each time
            log.debug("odoo.breaker", instance=self.name, state=state)
        if state == "open" and not self._closed and (self._probe_task is None or self._probe_task.done()):
            try:
                self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())
            except RuntimeError:  # no loop (sync caller): the next call after the cooldown is refused anyway
                self._probe_task = None

    async def _probe_loop(self) -> None:
        """While open: wait out the cooldown, then try authenticate (cheap, idempotent), never a message."""
        while not self._closed and self.breaker.state != "closed":
            await asyncio.sleep(max(0.0, self.breaker.retry_at - time.time()))
            if not self.breaker.probe_due():
                continue
            self.breaker.begin_probe()
            try:
                if not self.server_version:
                    await self.version()
                self._authenticated = False
                await self._ensure_auth()
            except GatewayError as exc:
                self._failed(exc)
            except RpcFault as fault:  # pragma: no cover - version() classifies already
                self._failed(classify(fault, instance=self.name))
            else:
                self._succeeded()


def _process_result(result: Any) -> ProcessResult:
    if result is None:
        return ProcessResult("dropped")
    if result is False:
        return ProcessResult("false")
    if isinstance(result, list):  # a recordset comes back as a list of ids
        result = result[-1] if result else False
        if result is False:
            return ProcessResult("false")
    if isinstance(result, int) and not isinstance(result, bool):
        return ProcessResult("posted", result)
    return ProcessResult("posted", None)
