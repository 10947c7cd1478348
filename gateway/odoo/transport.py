"""The wire: a small keep-alive HTTP/1.1 client on asyncio, and Odoo's two RPC dialects on top of it.

Why our own HTTP client: the stdlib has no async HTTP, xmlrpc.client's blocking transport would need a
thread per call and cannot be cancelled cleanly on a hang, and the one thing we need (POST with a body,
read a length-delimited answer, reuse the socket) is small. Transports only speak the protocol: they
return results or raise `RpcFault` (Odoo answered with an error) or `TransportError` (no answer).
Deciding what an error *means* for a message is the client's job (client.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import TempFailure

# Above this size XML-RPC (de)serialisation runs in a thread so a 20 MB attachment does not stall the loop.
_OFFLOAD_BYTES = 256 * 1024
_MAX_HEADER_BYTES = 64 * 1024
_COALESCE_BYTES = 256 * 1024
_USER_AGENT = "mailgw"


class TransportError(TempFailure):
    """No usable answer: connection refused/reset, timeout, malformed HTTP. Always transient."""

    def __init__(self, message: str, *, kind: str = "unreachable"):
        super().__init__(message)
        self.kind = kind  # unreachable | timeout | protocol


class RpcFault(Exception):
    """Odoo (or a proxy in front of it) answered with an error.

    XML-RPC: `code` is the faultCode (1-4), `http_status` 200. JSON-2 and plain HTTP errors: `code` is the
    HTTP status. `name` is the exception class when known (``builtins.ValueError``), `message` its text
    (for XML-RPC fault 1 the last traceback line), `detail` the full fault string or debug traceback.
    """

    def __init__(self, *, code: int, message: str, name: str = "", http_status: int = 200, detail: str = "",
                 protocol: str = "xmlrpc"):
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name
        self.http_status = http_status
        self.detail = detail or message
        self.protocol = protocol

    @property
    def text(self) -> str:
        """Everything Odoo said, for matching well-known messages."""
        return f"{self.name}: {self.message}\n{self.detail}"

    def __repr__(self) -> str:
        return f"RpcFault(protocol={self.protocol!r}, code={self.code}, name={self.name!r}, message={self.message!r})"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-cased names
    body: bytes


class _Connection:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.used = False

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already broken: nothing to do
            pass


class HttpConnectionPool:
    """Keep-alive connections to one origin; at most `size` requests in flight (the per-instance bound)."""

    def __init__(self, url: str, *, size: int, timeout: float, ssl_context: ssl.SSLContext | None = None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)
        self._closed = False

    async def request(self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                      *, timeout: float | None = None) -> HttpResponse:
        """One request; raises TransportError on anything but a complete HTTP answer."""
        timeout = self.timeout if timeout is None else timeout
        async with self._slots:
            try:
                async with asyncio.timeout(timeout):
                    return await self._request(method, path, body, headers or {})
            except TimeoutError:
                raise TransportError(f"no answer from {self.host}:{self.port} within {timeout:g}s",
                                     kind="timeout") from None

    async def _request(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> HttpResponse:
        head = self._head(method, path, body, headers)
        for attempt in (0, 1):
            conn = await self._acquire()
            reused = conn.used
            got_bytes = [False]
            try:
                if len(body) <= _COALESCE_BYTES:
                    conn.writer.write(head + body)  # one segment: no Nagle/delayed-ACK stall, one syscall
                else:
                    conn.writer.write(head)
                    conn.writer.write(body)
                await conn.writer.drain()
                response, keep = await self._read(conn, method, got_bytes)
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                conn.close()
                # A reused keep-alive socket the server closed while idle fails before any answer byte:
                # the request never ran, so one retry on a fresh connection is safe.
                if reused and not got_bytes[0] and attempt == 0:
                    continue
                raise TransportError(f"connection to {self.host}:{self.port} failed: {_describe(exc)}") from None
            except BaseException:
                conn.close()  # cancelled or timed out mid-request: the socket state is unknown
                raise
            conn.used = True
            if keep and not self._closed:
                self._idle.append(conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")

    def _head(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"Host: {self._host_header}",
                 f"User-Agent: {_USER_AGENT}", f"Content-Length: {len(body)}", "Connection: keep-alive"]
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _acquire(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None,
                limit=_MAX_HEADER_BYTES)
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {_describe(exc)}") from None
        return _Connection(reader, writer)

    async def _read(self, conn: _Connection, method: str, got_bytes: list[bool]) -> tuple[HttpResponse, bool]:
        reader = conn.reader
        try:
            block = await reader.readuntil(b"\r\n\r\n")  # status line and headers in one read
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                got_bytes[0] = True
            raise ConnectionResetError("connection closed before the answer headers ended") from None
        except asyncio.LimitOverrunError:
            raise TransportError("answer headers too large", kind="protocol") from None
        got_bytes[0] = True
        lines = block.decode("latin-1").split("\r\n")
        parts = lines[0].split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP answer: {lines[0][:80]!r}", kind="protocol")
        version, status = parts[0], int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
            keep = False
        return HttpResponse(status, headers, body), keep

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise ConnectionResetError("connection closed inside a chunked answer")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed mid-answer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _http_error(resp: HttpResponse, protocol: str) -> RpcFault:
    text = resp.body[:2000].decode("utf-8", "replace").strip()
    return RpcFault(code=resp.status, http_status=resp.status, name="", message=f"HTTP {resp.status}",
                    detail=text, protocol=protocol)


class RpcTransport(Protocol):
    """What OdooClient needs from a dialect."""

    protocol: str

    async def version(self) -> dict[str, Any]: ...

    async def authenticate(self) -> int: ...

    async def call(self, model: str, method: str, args: list[Any], kwargs: Mapping[str, Any], *,
                   names: tuple[str, ...] = (), timeout: float | None = None) -> Any: ...

    async def close(self) -> None: ...


class XmlRpcTransport:
    """`/xmlrpc/2/common` and `/xmlrpc/2/object` (`execute_kw`), password or API key as the secret."""

    protocol = "xmlrpc"

    def __init__(self, pool: HttpConnectionPool, database: str, login: str, secret: str):
        self._pool = pool
        self.database = database
        self.login = login
        self.__secret = secret
        self.uid: int | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"XmlRpcTransport(database={self.database!r}, login={self.login!r}, uid={self.uid})"

    async def _post(self, service: str, method: str, params: tuple[Any, ...], *, timeout: float | None = None,
                    size_hint: int = 0) -> Any:
        if size_hint > _OFFLOAD_BYTES:
            payload = await asyncio.to_thread(_xml_dumps, params, method)
        else:
            payload = _xml_dumps(params, method)
        resp = await self._pool.request("POST", f"/xmlrpc/2/{service}", payload,
                                        {"Content-Type": "text/xml"}, timeout=timeout)
        if resp.status != 200:
            raise _http_error(resp, self.protocol)
        try:
            if len(resp.body) > _OFFLOAD_BYTES:
                result = await asyncio.to_thread(_xml_loads, resp.body)
            else:
                result = _xml_loads(resp.body)
        except xmlrpc.client.Fault as fault:
            raise _xml_fault(fault) from None
        except Exception as exc:  # expat errors and friends: a proxy page, a truncated body
            raise TransportError(f"unreadable XML-RPC answer: {exc}", kind="protocol") from None
        return result

    async def version(self) -> dict[str, Any]:
        result = await self._post("common", "version", ())
        return dict(result) if isinstance(result, dict) else {}

    async def authenticate(self) -> int:
        uid = await self._post("common", "authenticate", (self.database, self.login, self.__secret, {}))
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            self.uid = None
            raise RpcFault(code=3, message="Access Denied", name="odoo.exceptions.AccessDenied",
                           detail="authenticate returned False", protocol=self.protocol)
        self.uid = uid
        return uid

    async def call(self, model: str, method: str, args: list[Any], kwargs: Mapping[str, Any], *,
                   names: tuple[str, ...] = (), timeout: float | None = None) -> Any:
        if self.uid is None:
            await self.authenticate()
        size = sum(len(a.data) for a in args if isinstance(a, xmlrpc.client.Binary))
        try:
            return await self._post(
                "object", "execute_kw",
                (self.database, self.uid, self.__secret, model, method, list(args), dict(kwargs)),
                timeout=timeout, size_hint=size)
        except RpcFault as fault:
            if fault.code == 3:
                self.uid = None  # password changed or key revoked: log in again next time
            raise

    async def close(self) -> None:
        await self._pool.close()


def _xml_dumps(params: tuple[Any, ...], method: str) -> bytes:
    return xmlrpc.client.dumps(params, methodname=method, encoding="utf-8").encode("utf-8")


def _xml_loads(body: bytes) -> Any:
    return xmlrpc.client.loads(body, use_builtin_types=True)[0][0]


def _xml_fault(fault: xmlrpc.client.Fault) -> RpcFault:
    text = str(fault.faultString or "")
    code = fault.faultCode if isinstance(fault.faultCode, int) else 1
    name, message = "", text.strip()
    if code == 1:
        # Fault 1 carries the whole traceback; the exception is its last non-empty line.
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
        head, sep, tail = last.partition(": ")
        if sep and " " not in head.strip():
            name, message = head.strip(), tail.strip()
        else:
            message = last.strip()
    else:
        name = {2: "odoo.exceptions.UserError", 3: "odoo.exceptions.AccessDenied",
                4: "odoo.exceptions.AccessError"}.get(code, "")
    return RpcFault(code=code, message=message, name=name, detail=text, protocol="xmlrpc")


class Json2Transport:
    """Odoo 19's `/json/2/<model>/<method>`: bearer API key, `X-Odoo-Database`, named arguments only."""

    protocol = "json2"

    def __init__(self, pool: HttpConnectionPool, database: str, login: str, secret: str):
        self._pool = pool
        self.database = database
        self.login = login
        self.__headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Authorization": f"bearer {secret}",
            "X-Odoo-Database": database,
        }
        self.uid: int | None = None

    def __repr__(self) -> str:  # never show the key
        return f"Json2Transport(database={self.database!r}, login={self.login!r}, uid={self.uid})"

    async def version(self) -> dict[str, Any]:
        resp = await self._pool.request("GET", "/json/version", b"", {"Accept": "application/json"})
        if resp.status != 200:
            raise _http_error(resp, self.protocol)
        data = _json_loads(resp.body)
        info = data.get("version_info") or data.get("server_version_info") or []
        ver = data.get("version") or data.get("server_version") or ""
        return {"server_version": ver, "server_version_info": info, "server_serie": ver, "protocol_version": 1}

    async def authenticate(self) -> int:
        # JSON-2 is stateless; one cheap call proves the key and the database and tells us who we are.
        rows = await self.call("res.users", "search_read", [], {
            "domain": [["login", "=", self.login]], "fields": ["id"], "limit": 1})
        self.uid = int(rows[0]["id"]) if rows else 0
        return self.uid

    async def call(self, model: str, method: str, args: list[Any], kwargs: Mapping[str, Any], *,
                   names: tuple[str, ...] = (), timeout: float | None = None) -> Any:
        # Positional arguments are bound to `names` (JSON-2 has no positional form); record ids go as "ids".
        body = dict(zip(names, args, strict=False))
        body.update(kwargs)
        big = any(isinstance(v, str) and len(v) > _OFFLOAD_BYTES for v in body.values())
        payload = await asyncio.to_thread(_json_dumps, body) if big else _json_dumps(body)
        resp = await self._pool.request("POST", f"/json/2/{model}/{method}", payload, self.__headers,
                                        timeout=timeout)
        if resp.status == 200:
            try:
                return json.loads(resp.body) if resp.body.strip() else None
            except ValueError:
                raise TransportError("unreadable JSON-2 answer", kind="protocol") from None
        try:
            err = json.loads(resp.body)
        except ValueError:
            err = None
        if isinstance(err, dict) and ("name" in err or "message" in err):
            raise RpcFault(code=resp.status, http_status=resp.status, name=str(err.get("name") or ""),
                           message=str(err.get("message") or ""), detail=str(err.get("debug") or ""),
                           protocol=self.protocol)
        raise _http_error(resp, self.protocol)

    async def close(self) -> None:
        await self._pool.close()


def _json_dumps(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_loads(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise TransportError("unreadable JSON answer", kind="protocol") from None
    return data if isinstance(data, dict) else {}
