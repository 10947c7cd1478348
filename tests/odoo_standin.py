"""A stand-in Odoo: a real HTTP server speaking the RPC contract of docs/odoo.md §10.7.

- XML-RPC: ``/xmlrpc/2/common`` (version, authenticate, login, about) and ``/xmlrpc/2/object``
  (execute_kw, execute), integer fault codes 1-4 with Odoo's texts (fault 1 = traceback text, 3 =
  "Access Denied"), and the None result that XML-RPC cannot marshal (fault 1 after "commit").
- JSON-2: ``POST /json/2/<model>/<method>`` with bearer key and ``X-Odoo-Database``, named arguments
  only (422 on unknown/missing/``ids`` for a model method), HTTP status + ``{name, message, arguments,
  context, debug}`` errors (401/403/404/409/422/500), ``null`` for None; ``GET /json/version``.
- ``mail.thread.message_process`` follows Odoo 19's order closely enough for the gateway: duplicate
  Message-Id ⇒ False, loop marker ⇒ None, bounce ⇒ False, reply by References/In-Reply-To, alias by
  Delivered-To/To/Cc, catchall ⇒ False, fallback model, else "No possible route" (ValueError).
- Switchable failures: `down()`/`up()` (listening socket closed: connection refused), behaviours
  ``503``, ``429``, ``500``, ``hang`` (reads the request, never answers until released), ``reset``
  (closes without answering), optionally for the next N requests only; scripted message_process outcomes.
- Records every call, with the exact message bytes Odoo would parse (Binary bytes, or str encoded UTF-8).
- Delivery status (tests/odoo_standin_mail.py): partners with `message_bounce`, `mail.notification` rows with
  Odoo 19's access rules (create and unlink allowed to the gateway's admin user, write only on one's own), and a
  bounce through message_process counted and marked on the notification as `_routing_handle_bounce` does.

Odoo ≤16 mode (`legacy=True`): version 16.0, no `mail.alias.domain` model (fault 2 "Object … doesn't
exist"), catchall domain in ICPs, no JSON-2, unknown fields raise "Invalid field".
"""

from __future__ import annotations

import email
import email.policy
import itertools
import json
import socket
import threading
import time
import xmlrpc.client
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.odoo_standin_mail import NOTIFICATION_FIELDS, AccessDenied, MailModel, UniqueViolation

_TRACEBACK_HEAD = (
    "Traceback (most recent call last):\n"
    '  File "/opt/odoo/addons/rpc/controllers/xmlrpc.py", line 160, in xmlrpc_2\n'
    "    response = self._xmlrpc(service)\n"
    '  File "/opt/odoo/odoo/service/model.py", line 62, in execute_kw\n'
    "    return execute(db, uid, obj, method, *args, **kw or {})\n"
)
NO_ROUTE = ("No possible route found for incoming message from {frm} to {to} (Message-Id {mid}:). "
            "Create an appropriate mail.alias or force the destination model.")
NONE_FAULT = "TypeError: cannot marshal None unless allow_none is enabled"

MODEL_FIELDS: dict[str, set[str]] = {
    "mail.alias.domain": {"id", "name", "sequence", "company_ids", "bounce_alias", "bounce_email", "catchall_alias",
                          "catchall_email", "default_from", "default_from_email", "write_date"},
    "mail.alias": {"id", "alias_name", "alias_full_name", "alias_domain_id", "alias_domain", "alias_model_id",
                   "alias_defaults", "alias_force_thread_id", "alias_parent_model_id", "alias_parent_thread_id",
                   "alias_contact", "alias_incoming_local", "alias_bounced_content", "alias_status", "write_date"},
    "mail.message": {"id", "model", "res_id", "message_id", "message_type", "subtype_id", "is_internal",
                     "parent_id", "author_id", "record_name", "date"},
    "ir.model": {"id", "model", "name"},
    "ir.config_parameter": {"id", "key", "value"},
    "res.partner": {"id", "name", "email", "email_normalized", "user_ids", "active", "partner_share",
                    "company_id", "message_bounce"},
    "res.users": {"id", "login", "name", "partner_id", "email", "share", "active"},
    "mail.gateway.allowed": {"id", "email", "email_normalized"},
    "mail.notification": NOTIFICATION_FIELDS,
}
LEGACY_ALIAS_FIELDS = {"id", "alias_name", "alias_model_id", "alias_defaults", "alias_force_thread_id",
                       "alias_parent_model_id", "alias_parent_thread_id", "alias_contact", "alias_bounced_content",
                       "write_date"}
MESSAGE_PROCESS_ARGS = ("model", "message", "custom_values", "save_original", "strip_attachments", "thread_id")


class OdooError(Exception):
    """An exception 'raised inside Odoo': `fault` is the /xmlrpc/2 code, `status` the JSON-2 status."""

    def __init__(self, name: str, message: str, *, fault: int, status: int):
        super().__init__(message)
        self.name, self.message, self.fault, self.status = name, message, fault, status

    def fault_string(self) -> str:
        if self.fault == 1:  # the whole traceback, the exception last
            return f"{_TRACEBACK_HEAD}{self.name}: {self.message}\n"
        return self.message


def value_error(msg: str) -> OdooError:
    return OdooError("builtins.ValueError", msg, fault=1, status=500)


def user_error(msg: str) -> OdooError:
    return OdooError("odoo.exceptions.UserError", msg, fault=2, status=422)


def validation_error(msg: str) -> OdooError:
    return OdooError("odoo.exceptions.ValidationError", msg, fault=2, status=422)


def access_error(msg: str) -> OdooError:
    return OdooError("odoo.exceptions.AccessError", msg, fault=4, status=403)


def serialization_failure() -> OdooError:
    return OdooError("psycopg2.errors.SerializationFailure",
                     "could not serialize access due to concurrent update", fault=1, status=500)


@dataclass
class StandinCall:
    api: str  # xmlrpc | json2
    service: str  # common | object | json2 | version
    model: str
    method: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, str]
    message: bytes | None = None  # message_process: the bytes Odoo parses
    message_type: str = ""  # binary | str
    outcome: str = ""  # "id:12", "false", "none", "fault:1 ...", "http:503", "hang", "reset"
    at: float = field(default_factory=time.time)  # when the answer was ready
    started: float = field(default_factory=lambda: getattr(_REQUEST, "started", time.time()))

    @property
    def message_id(self) -> str | None:
        if self.message is None:
            return None
        msg = email.message_from_bytes(self.message, policy=email.policy.compat32)
        value = msg.get("Message-Id")
        return str(value).strip() if value else None


_REQUEST = threading.local()  # when the request being handled in this thread arrived


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    standin: OdooStandin


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Like a production server: no Nagle delay on small answers.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.standin._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.standin._track(self.connection, add=False)

    def do_GET(self) -> None:
        self.server.standin._handle(self, "GET", b"")

    def do_POST(self) -> None:
        _REQUEST.started = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.standin._handle(self, "POST", body)

    def reply(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n" + body)  # headers and body in one write
        self.flush_headers()


class OdooStandin:
    """Start with `start()` (or as a context manager); `url` is http://127.0.0.1:<port>."""

    def __init__(self, *, database: str = "odoo", login: str = "mailgw", password: str = "secret",
                 api_key: str = "standin-api-key", uid: int = 7, legacy: bool = False,
                 domain: str = "example.com"):
        self.database, self.login, self.password, self.api_key, self.uid = database, login, password, api_key, uid
        self.legacy = legacy
        self.version_info: list[Any] = [16, 0, 0, "final", 0, ""] if legacy else [19, 0, 0, "final", 0, ""]
        self.port = 0
        self.calls: list[StandinCall] = []
        self.lock = threading.RLock()
        self.behaviour = "ok"
        self._behaviour_left: int | None = None
        self.latency = 0.0
        self.script: deque[str] = deque()  # outcomes for the next message_process calls
        self.outcome_for: dict[str, str] = {}  # Message-Id -> outcome
        self.hook: Callable[[StandinCall], None] | None = None
        # Benchmarks: answer message_process with this at once (no parsing), and keep no call records.
        self.instant: Any = None
        self.record_calls = True
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.connections_opened = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1000)
        self.db: dict[str, list[dict[str, Any]]] = {m: [] for m in MODEL_FIELDS}
        self.records: dict[str, dict[int, dict[str, Any]]] = {}
        self.mail = MailModel(self.db, user_partner_id=3, next_id=self._ids)
        self._seed(domain)

    # -- data ---------------------------------------------------------------------------------------------

    def _seed(self, domain: str) -> None:
        for mid, model in ((1, "res.partner"), (2, "crm.lead"), (3, "helpdesk.ticket"), (4, "project.task"),
                           (5, "mail.thread")):
            self.db["ir.model"].append({"id": mid, "model": model, "name": model})
        self.db["res.users"].append({"id": self.uid, "login": self.login, "name": "Mail Gateway",
                                     "partner_id": [3, "Mail Gateway"], "email": False, "share": False,
                                     "active": True})
        if self.legacy:
            del self.db["mail.alias.domain"]
            del self.db["mail.gateway.allowed"]
            for key, value in (("mail.catchall.domain", domain), ("mail.catchall.alias", "catchall"),
                               ("mail.bounce.alias", "bounce"), ("mail.default.from", "notifications")):
                self.set_param(key, value)
        else:
            self.add_domain(domain)
        self.add_alias("sales", "crm.lead")
        self.add_alias("support", "helpdesk.ticket", contact="partners")

    def add_domain(self, name: str, *, bounce: str = "bounce", catchall: str = "catchall",
                   default_from: str = "notifications") -> int:
        with self.lock:
            did = len(self.db["mail.alias.domain"]) + 1
            self.db["mail.alias.domain"].append({
                "id": did, "name": name, "sequence": 10 * did, "company_ids": [1] if did == 1 else [],
                "bounce_alias": bounce, "bounce_email": f"{bounce}@{name}", "catchall_alias": catchall,
                "catchall_email": f"{catchall}@{name}", "default_from": default_from,
                "default_from_email": default_from if "@" in default_from else f"{default_from}@{name}",
            })
            return did

    def model_id(self, model: str) -> int:
        for row in self.db["ir.model"]:
            if row["model"] == model:
                return int(row["id"])
        mid = len(self.db["ir.model"]) + 1
        self.db["ir.model"].append({"id": mid, "model": model, "name": model})
        return mid

    def add_alias(self, name: str, model: str, *, domain_id: int | None = 1, force_thread_id: int = 0,
                  contact: str = "everyone", incoming_local: bool = False, status: str = "valid",
                  parent_model: str | None = None, parent_thread_id: int = 0, defaults: str = "{}") -> int:
        with self.lock:
            aid = len(self.db["mail.alias"]) + 1
            row: dict[str, Any] = {
                "id": aid, "alias_name": name, "alias_model_id": [self.model_id(model), model],
                "alias_defaults": defaults, "alias_force_thread_id": force_thread_id,
                "alias_parent_model_id": [self.model_id(parent_model), parent_model] if parent_model else False,
                "alias_parent_thread_id": parent_thread_id, "alias_contact": contact,
                "alias_bounced_content": False,
            }
            if not self.legacy:
                dom = next((d for d in self.db["mail.alias.domain"] if d["id"] == domain_id), None)
                row.update({
                    "alias_domain_id": [dom["id"], dom["name"]] if dom else False,
                    "alias_domain": dom["name"] if dom else False,
                    "alias_full_name": f"{name}@{dom['name']}" if dom else name,
                    "alias_incoming_local": incoming_local, "alias_status": status,
                })
            self.db["mail.alias"].append(row)
            return aid

    def add_user(self, login: str, email: str | None = None, *, share: bool = False, name: str = "") -> int:
        """A res.users row: internal (share=False, Odoo's base.group_user) unless `share` (portal)."""
        with self.lock:
            uid = max(int(r["id"]) for r in self.db["res.users"]) + 1
            self.db["res.users"].append({"id": uid, "login": login, "name": name or login, "email": email or login,
                                         "partner_id": [uid + 100, name or login], "share": share, "active": True})
            return uid

    def set_param(self, key: str, value: str) -> None:
        with self.lock:
            rows = self.db["ir.config_parameter"]
            for row in rows:
                if row["key"] == key:
                    row["value"] = value
                    return
            rows.append({"id": len(rows) + 1, "key": key, "value": value})

    def add_message(self, message_id: str, model: str, res_id: int) -> int:
        with self.lock:
            mid = next(self._ids)
            self.db["mail.message"].append({"id": mid, "message_id": message_id, "model": model, "res_id": res_id,
                                            "message_type": "email", "date": "2025-01-01 00:00:00"})
            return mid

    def add_partner(self, name: str, address: str) -> int:
        with self.lock:
            return self.mail.add_partner(name, address)

    def add_notification(self, message_db_id: int, partner_id: int | None, **kw: Any) -> int:
        with self.lock:
            return self.mail.add_notification(message_db_id, partner_id, **kw)

    def partner_bounces(self, partner_id: int) -> int:
        with self.lock:
            return int(self.mail.partner(partner_id)["message_bounce"])

    def notifications(self, message_db_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(n) for n in self.mail.notifications(message_db_id)]

    # -- control ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OdooStandin:
        self._release.clear()
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.standin = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"odoo-standin-{self.port}", daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening and drop every open connection: clients see 'connection refused'."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._drop_connections()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def up(self) -> None:
        if self._server is None:
            self.start()

    def stop(self) -> None:
        self._release.set()
        self.down()

    def __enter__(self) -> OdooStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_behaviour(self, behaviour: str, times: int | None = None) -> None:
        """ok | 503 | 429 | 500 | hang | reset — for every request, or only the next `times` ones."""
        with self.lock:
            self.behaviour = behaviour
            self._behaviour_left = times
            if behaviour != "hang":
                self._release.set()
            else:
                self._release.clear()

    def release_hangs(self) -> None:
        self._release.set()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self.lock:
            if add:
                self._conns.add(conn)
                self.connections_opened += 1
            else:
                self._conns.discard(conn)

    def _drop_connections(self) -> None:
        with self.lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- queries for tests --------------------------------------------------------------------------------

    def message_calls(self) -> list[StandinCall]:
        with self.lock:
            return [c for c in self.calls if c.method == "message_process"]

    def posted(self) -> list[StandinCall]:
        """message_process calls that created/updated a record."""
        return [c for c in self.message_calls() if c.outcome.startswith("id:")]

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()

    # -- HTTP ---------------------------------------------------------------------------------------------

    def _take_behaviour(self) -> str:
        with self.lock:
            behaviour = self.behaviour
            if behaviour != "ok" and self._behaviour_left is not None:
                self._behaviour_left -= 1
                if self._behaviour_left <= 0:
                    self.behaviour, self._behaviour_left = "ok", None
            return behaviour

    def _handle(self, h: _Handler, verb: str, body: bytes) -> None:
        if verb == "GET":
            _REQUEST.started = time.time()
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._handle_request(h, verb, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _handle_request(self, h: _Handler, verb: str, body: bytes) -> None:
        path = h.path.split("?", 1)[0]
        headers = {k.lower(): v for k, v in h.headers.items()}
        behaviour = self._take_behaviour()
        if behaviour != "ok":
            self._record(StandinCall("http", path, "", "", [], {}, headers, outcome=behaviour))
            if behaviour == "hang":
                self._release.wait(60)
                h.close_connection = True
                return
            if behaviour == "reset":
                h.close_connection = True
                try:
                    h.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            status = int(behaviour)
            extra = {"Retry-After": "1"} if status in (429, 503) else {}
            h.reply(status, f"<html><body>{status} {h.responses.get(status, ('',))[0]}</body></html>".encode(),
                    "text/html", extra)
            return
        if self.latency:
            time.sleep(self.latency)
        if verb == "GET" and path in ("/json/version", "/web/version"):
            ver = ".".join(str(p) for p in self.version_info[:2])
            h.reply(200, json.dumps({"version_info": self.version_info, "version": ver}).encode(), "application/json")
        elif verb == "POST" and path in ("/xmlrpc/2/common", "/xmlrpc/2/object"):
            self._xmlrpc(h, path.rsplit("/", 1)[1], body, headers)
        elif verb == "POST" and path.startswith("/json/2/") and not self.legacy:
            self._json2(h, path, body, headers)
        else:
            h.reply(404, b"<html><body>404 Not Found</body></html>", "text/html")

    def _record(self, call: StandinCall) -> None:
        if not self.record_calls:
            return
        with self.lock:
            self.calls.append(call)
        if self.hook is not None:
            self.hook(call)

    # XML-RPC ---------------------------------------------------------------------------------------------

    def _xmlrpc(self, h: _Handler, service: str, body: bytes, headers: dict[str, str]) -> None:
        try:
            params, method = xmlrpc.client.loads(body, use_builtin_types=True)
        except Exception as exc:
            self._xml_fault(h, OdooError("xml.parsers.expat.ExpatError", str(exc), fault=1, status=500))
            return
        call = StandinCall("xmlrpc", service, "", method or "", list(params), {}, headers)
        try:
            if service == "common":
                result = self._common(method or "", list(params))
            else:
                if method == "execute_kw":
                    db, uid, secret, model, meth, *rest = params
                    args = list(rest[0]) if rest else []
                    kwargs = dict(rest[1]) if len(rest) > 1 and rest[1] else {}
                elif method == "execute":
                    db, uid, secret, model, meth, *args = params
                    kwargs = {}
                else:
                    raise OdooError("builtins.NameError", f"Method not available {method}", fault=1, status=500)
                call.model, call.method, call.args, call.kwargs = model, meth, args, kwargs
                self._check_db(db)
                if uid != self.uid or secret not in (self.password, self.api_key):
                    raise OdooError("odoo.exceptions.AccessDenied", "Access Denied", fault=3, status=403)
                if meth == "message_process":
                    raw = args[1] if len(args) > 1 else kwargs.get("message")
                    call.message_type = "binary" if isinstance(raw, bytes) else "str"
                    call.message = raw if isinstance(raw, bytes) else str(raw).encode("utf-8")
                result = self._dispatch(model, meth, args, kwargs, call)
        except OdooError as err:
            call.outcome = f"fault:{err.fault} {err.message}"
            self._record(call)
            self._xml_fault(h, err)
            return
        try:
            payload = xmlrpc.client.dumps((result,), methodresponse=True, encoding="utf-8").encode("utf-8")
        except TypeError as exc:  # Odoo's marshaller has allow_none off: None is a fault, after the commit
            call.outcome = "none"
            self._record(call)
            self._xml_fault(h, OdooError("TypeError", str(exc), fault=1, status=500))
            return
        call.outcome = _outcome(result) if call.method == "message_process" else "ok"
        self._record(call)
        h.reply(200, payload, "text/xml; charset=utf-8")

    def _xml_fault(self, h: _Handler, err: OdooError) -> None:
        name = err.name.rsplit(".", 1)[-1] if err.name.startswith("builtins.") else err.name
        text = f"{_TRACEBACK_HEAD}{name}: {err.message}\n" if err.fault == 1 else err.message
        payload = xmlrpc.client.dumps(xmlrpc.client.Fault(err.fault, text), methodresponse=True).encode("utf-8")
        h.reply(200, payload, "text/xml; charset=utf-8")

    def _common(self, method: str, params: list[Any]) -> Any:
        if method == "version":
            ver = ".".join(str(p) for p in self.version_info[:2])
            return {"server_version": ver, "server_version_info": self.version_info, "server_serie": ver,
                    "protocol_version": 1}
        if method in ("authenticate", "login"):
            db, login, secret = params[0], params[1], params[2]
            self._check_db(db)
            return self.uid if login == self.login and secret in (self.password, self.api_key) else False
        if method == "about":
            return "See http://openerp.com"
        raise OdooError("builtins.NameError", f"Method not available {method}", fault=1, status=500)

    def _check_db(self, db: str) -> None:
        if db != self.database:
            raise OdooError("psycopg2.OperationalError",
                            f'connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed: '
                            f'FATAL:  database "{db}" does not exist', fault=1, status=500)

    # JSON-2 ----------------------------------------------------------------------------------------------

    def _json2(self, h: _Handler, path: str, body: bytes, headers: dict[str, str]) -> None:
        parts = path.split("/")
        model, method = (parts[3], parts[4]) if len(parts) >= 5 else ("", "")
        call = StandinCall("json2", "json2", model, method, [], {}, headers)
        try:
            auth = headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not key:
                raise OdooError("werkzeug.exceptions.Unauthorized",
                                "User not authenticated, use an API Key with a Bearer Authorization header.",
                                fault=3, status=401)
            if key.strip() != self.api_key:
                raise OdooError("werkzeug.exceptions.Unauthorized", "Invalid apikey", fault=3, status=401)
            db = headers.get("x-odoo-database")
            if db is not None and db != self.database:
                raise OdooError("werkzeug.exceptions.NotFound", f"database {db!r} not found", fault=1, status=404)
            try:
                kwargs = json.loads(body or b"{}")
            except ValueError as exc:
                raise OdooError("werkzeug.exceptions.BadRequest", f"invalid JSON: {exc}", fault=1,
                                status=400) from None
            if not isinstance(kwargs, dict):
                raise OdooError("werkzeug.exceptions.BadRequest", "the body must be a JSON object", fault=1,
                                status=400)
            call.kwargs = dict(kwargs)
            if (model not in MODEL_FIELDS and model != "mail.thread") or (
                    model == "mail.thread" and method != "message_process"):
                raise OdooError("werkzeug.exceptions.NotFound", f"no such model/method {model}.{method}",
                                fault=1, status=404)
            args: list[Any] = []
            if method == "message_process":
                if "ids" in kwargs:
                    raise OdooError("werkzeug.exceptions.UnprocessableEntity",
                                    "cannot call mail.thread.message_process with ids", fault=1, status=422)
                unknown = set(kwargs) - {*MESSAGE_PROCESS_ARGS, "context"}
                if unknown:
                    raise OdooError("werkzeug.exceptions.UnprocessableEntity",
                                    f"got an unexpected keyword argument {sorted(unknown)[0]!r}", fault=1,
                                    status=422)
                for required in ("model", "message"):
                    if required not in kwargs:
                        raise OdooError("werkzeug.exceptions.UnprocessableEntity",
                                        f"missing a required argument: {required!r}", fault=1, status=422)
                raw = kwargs["message"]
                call.message_type = "str" if isinstance(raw, str) else type(raw).__name__
                call.message = str(raw).encode("utf-8")  # Odoo encodes text as UTF-8 (docs/odoo.md §10.1)
                args = [kwargs.pop("model"), kwargs.pop("message")]
            elif method == "read":
                args = [kwargs.pop("ids", [])]
            kwargs.pop("context", None)
            result = self._dispatch(model, method, args, kwargs, call)
        except OdooError as err:
            call.outcome = f"http:{err.status} {err.name}"
            self._record(call)
            payload = json.dumps({"name": err.name, "message": err.message, "arguments": [err.message],
                                  "context": {}, "debug": err.fault_string()}).encode()
            extra = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
            h.reply(err.status, payload, "application/json; charset=utf-8", extra)
            return
        call.outcome = _outcome(result) if method == "message_process" else "ok"
        self._record(call)
        h.reply(200, json.dumps(result).encode(), "application/json; charset=utf-8")

    # Models ----------------------------------------------------------------------------------------------

    def _dispatch(self, model: str, method: str, args: list[Any], kwargs: dict[str, Any], call: StandinCall) -> Any:
        if model == "mail.thread" and method == "message_process":
            return self._message_process(args, kwargs, call)
        if model not in self.db:
            raise user_error(f"Object {model} doesn't exist")
        if method.startswith("_"):
            raise access_error(f"Private methods (such as '{model}.{method}') cannot be called remotely.")
        if model == "mail.notification" and method in ("create", "write", "unlink"):
            return self._notification_method(method, args, kwargs)
        if model == "ir.config_parameter" and method == "get_param":
            key = args[0] if args else kwargs.get("key")
            return next((r["value"] for r in self.db[model] if r["key"] == key), False)
        if method == "search_read":
            domain = args[0] if args else kwargs.get("domain", [])
            fields = args[1] if len(args) > 1 else kwargs.get("fields")
            rows = [r for r in self.db[model] if _match(r, domain)]
            order = kwargs.get("order") or ""
            if order.startswith("id desc"):
                rows.sort(key=lambda r: -int(r["id"]))
            limit = kwargs.get("limit")
            if limit:
                rows = rows[:int(limit)]
            return [self._fields(model, r, fields) for r in rows]
        if method == "read":
            ids = list(args[0]) if args else list(kwargs.get("ids", []))
            fields = args[1] if len(args) > 1 else kwargs.get("fields")
            return [self._fields(model, r, fields) for r in self.db[model] if r["id"] in ids]
        if method == "search_count":
            return len([r for r in self.db[model] if _match(r, args[0] if args else kwargs.get("domain", []))])
        if method in ("context_get",):
            return {"lang": "en_US", "tz": "UTC", "uid": self.uid}
        raise OdooError("builtins.AttributeError", f"The method '{method}' does not exist on the model '{model}'",
                        fault=1, status=404)

    def _notification_method(self, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            with self.lock:
                if method == "create":
                    return self.mail.create(args[0] if args else kwargs["vals_list"])
                ids = list(args[0] if args else kwargs.get("ids", []))
                if method == "unlink":
                    return self.mail.unlink(ids)
                return self.mail.write(ids, args[1] if len(args) > 1 else kwargs.get("vals", {}))
        except AccessDenied as exc:
            raise access_error(str(exc)) from None
        except UniqueViolation as exc:
            raise validation_error(f"The operation cannot be completed: {exc}") from None
        except KeyError as exc:
            raise OdooError("odoo.exceptions.MissingError", str(exc.args[0]), fault=2, status=404) from None
        except ValueError as exc:
            raise value_error(str(exc)) from None

    def _fields(self, model: str, row: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
        known = LEGACY_ALIAS_FIELDS if (self.legacy and model == "mail.alias") else MODEL_FIELDS[model]
        wanted = list(fields) if fields else sorted(known)
        for name in wanted:
            if name not in known:
                raise value_error(f"Invalid field {name!r} on model {model!r}")
        out = {"id": row["id"]}
        for name in wanted:
            out[name] = row.get(name, False)
        return out

    def _message_process(self, args: list[Any], kwargs: dict[str, Any], call: StandinCall) -> Any:
        if self.instant is not None:
            return self.instant
        model = args[0] if args else kwargs.get("model")
        raw = call.message or b""
        thread_id = kwargs.get("thread_id") or (args[5] if len(args) > 5 else None)
        msg = email.message_from_bytes(raw, policy=email.policy.SMTP)
        mid = str(msg.get("Message-Id") or "").strip() or f"<{time.time():.7f}@localhost>"
        with self.lock:
            forced = self.outcome_for.get(mid) or (self.script.popleft() if self.script else None)
        if forced:
            return self._forced(forced, msg, mid)
        with self.lock:
            if any(m["message_id"] == mid for m in self.db["mail.message"]):
                return False  # "found duplicated Message-Id"
        refs = _ids(str(msg.get("References") or "")) or _ids(str(msg.get("In-Reply-To") or ""))
        if any("-loop-detection-bounce-email@" in r for r in refs):
            return None
        to = _addresses(msg, "Delivered-To", "To")
        rcpts = _addresses(msg, "Delivered-To", "To", "Cc", "Resent-To", "Resent-Cc")
        domains = self.db.get("mail.alias.domain", [])
        bounce = {f"{d['bounce_alias']}@{d['name']}".lower() for d in domains}
        catchall = {f"{d['catchall_alias']}@{d['name']}".lower() for d in domains}
        sender = str(msg.get("From") or "")
        if (to & bounce or msg.get_content_type() == "multipart/report"
                or sender.lower().split("@")[0].strip(' "<').endswith("mailer-daemon")):
            with self.lock:
                self.mail.handle_bounce(msg, self.records)
            return False
        with self.lock:
            parent = next((m for m in reversed(self.db["mail.message"]) if m["message_id"] in refs[-32:]), None)
        if parent is not None:
            return self._post(parent["model"], parent["res_id"], mid)
        aliases = [a for a in self.db["mail.alias"] if self._alias_address(a) in rcpts]
        if aliases:
            result = False
            for alias in aliases:
                if alias.get("alias_force_thread_id"):
                    result = self._post(alias["alias_model_id"][1], alias["alias_force_thread_id"], mid)
                else:
                    result = self._post(alias["alias_model_id"][1], None, mid)
            return result
        if to and to <= catchall:
            return False
        if model:
            return self._post(model, thread_id, mid)
        if to & catchall:
            return False
        raise value_error(NO_ROUTE.format(frm=sender, to=", ".join(sorted(to)), mid=mid))

    def _alias_address(self, alias: dict[str, Any]) -> str:
        if self.legacy:
            domain = next((r["value"] for r in self.db["ir.config_parameter"] if r["key"] == "mail.catchall.domain"),
                          "")
            return f"{alias['alias_name']}@{domain}".lower()
        return str(alias.get("alias_full_name") or "").lower()

    def _post(self, model: str, res_id: int | None, mid: str) -> int:
        with self.lock:
            table = self.records.setdefault(model, {})
            if not res_id or res_id not in table:
                res_id = res_id or next(self._ids)
                table[res_id] = {"id": res_id, "messages": []}
            table[res_id]["messages"].append(mid)
            self.add_message(mid, model, res_id)
            return res_id

    def _forced(self, outcome: str, msg: email.message.EmailMessage, mid: str) -> Any:
        if outcome == "false":
            return False
        if outcome == "none":
            return None
        if outcome == "noroute":
            raise value_error(NO_ROUTE.format(frm=msg.get("From"), to=msg.get("To"), mid=mid))
        if outcome == "mailbox_unavailable":
            raise value_error("Mailbox unavailable - unknown target model x.y")
        if outcome == "validation":
            raise validation_error("The operation cannot be completed: another model requires the record being "
                                   "deleted. If possible, archive it instead.")
        if outcome == "access":
            raise access_error("You are not allowed to access 'Lead/Opportunity' (crm.lead) records.")
        if outcome == "serialization":
            raise serialization_failure()
        if outcome.startswith("id:"):
            return int(outcome[3:])
        raise ValueError(f"unknown scripted outcome {outcome!r}")


def _outcome(result: Any) -> str:
    if result is False:
        return "false"
    if result is None:
        return "none"
    return f"id:{result}"


def _ids(value: str) -> list[str]:
    out, depth, cur = [], False, []
    for ch in "".join(value.split("\n")):
        if ch == "<":
            depth, cur = True, ["<"]
        elif ch == ">" and depth:
            cur.append(">")
            ident = "".join(cur).replace(" ", "").replace("\t", "").replace("\r", "")
            if "reply_to" not in ident:
                out.append(ident)
            depth = False
        elif depth:
            cur.append(ch)
    return out[-32:]


def _addresses(msg: email.message.EmailMessage, *names: str) -> set[str]:
    values = [str(v) for n in names for v in (msg.get_all(n) or [])]
    return {addr.lower() for _, addr in getaddresses(values) if addr}


def _match(row: dict[str, Any], domain: list[Any]) -> bool:
    """Odoo domain (prefix notation, implicit AND) on one row: =, !=, in, not in, ilike, =ilike."""
    items: Iterator[Any] = iter(domain)

    def term() -> bool:
        item = next(items)
        if item == "&":
            a, b = term(), term()
            return a and b
        if item == "|":
            a, b = term(), term()
            return a or b
        if item == "!":
            return not term()
        name, op, value = item
        have = row.get(name, False)
        if isinstance(have, list) and have and isinstance(have[0], int):
            have = have[0]
        if op == "=":
            return bool(have == value)
        if op == "!=":
            return bool(have != value)
        if op == "in":
            return have in value
        if op == "not in":
            return have not in value
        if op in ("ilike", "=ilike"):
            return str(value).lower() in str(have).lower() if op == "ilike" else str(have).lower() == str(value).lower()
        raise value_error(f"Invalid domain operator {op!r}")

    ok = True
    while True:
        try:
            ok = term() and ok
        except StopIteration:
            return ok


def odoo_instance_config(standin: OdooStandin, tmp_path: Any, *, name: str = "main", api: str = "xmlrpc",
                         domains: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An `odoo:` list item (YAML-shaped dict) pointing at this stand-in; the secret goes to a file."""
    from pathlib import Path

    secret = Path(tmp_path) / f"odoo-{name}-{api}.secret"
    secret.write_text(standin.password if api == "xmlrpc" else standin.api_key)
    return {"name": name, "url": standin.url, "database": standin.database, "login": standin.login,
            "password_file": str(secret), "api": api, "domains": domains or ["example.com"], **extra}
