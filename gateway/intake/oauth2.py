"""Access tokens for SASL XOAUTH2 mailboxes (Microsoft 365, Google), fetched by the gateway itself.

`TokenSource.token()` returns a cached access token and asks the token endpoint again shortly before it expires
(or after the server refused one: `invalidate()`). Grants: refresh_token when one is configured (Google,
Microsoft delegated access), client_credentials otherwise (Microsoft 365 app-only). The request is a plain form
POST (RFC 6749 §4.4 / §6) over a verifying TLS connection, run in a thread so the event loop never waits on it.
Secrets and tokens are never logged or put into error messages; the endpoint's `error`/`error_description`
are (they say what to fix).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from gateway.config import OAuth2Config
from gateway.errors import GatewayError

REFRESH_MARGIN = 120.0  # ask for a new token this long before the old one expires
DEFAULT_LIFETIME = 3600.0  # when the endpoint does not say (expires_in is RECOMMENDED, not required)


class OAuth2Error(GatewayError):
    """The token endpoint refused (bad client, revoked refresh token, …): an authentication problem."""


def xoauth2_initial_response(user: str, token: str) -> str:
    """The SASL XOAUTH2 initial client response, base64 (Google's and Microsoft's documented format)."""
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")


class TokenSource:
    def __init__(self, cfg: OAuth2Config, *, what: str, timeout: float = 30.0):
        self.cfg = cfg
        self.what = what  # the mailbox name, for messages
        self.timeout = timeout
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._token = None

    async def token(self) -> str:
        return (await self.token_info())[0]

    async def token_info(self) -> tuple[str, bool]:
        """(access token, fetched just now?). A cached token the server refuses (revoked, rotated keys) is worth
        one retry with a fresh one; a fresh token refused means the grant itself is wrong."""
        async with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                token, lifetime = await asyncio.to_thread(self._fetch)
                self._token = token
                self._refresh_at = time.time() + lifetime - min(REFRESH_MARGIN, lifetime / 2)
                return token, True
            return self._token, False

    def _form(self) -> dict[str, str]:
        cfg = self.cfg
        form = {"client_id": cfg.client_id}
        refresh = cfg.refresh_token(self.what)
        if refresh is not None:
            form.update(grant_type="refresh_token", refresh_token=refresh)
        else:
            form["grant_type"] = "client_credentials"
        secret = cfg.client_secret(self.what)
        if secret is not None:
            form["client_secret"] = secret
        if cfg.scope:
            form["scope"] = cfg.scope
        return form

    def _fetch(self) -> tuple[str, float]:
        body = urllib.parse.urlencode(self._form()).encode()
        req = urllib.request.Request(self.cfg.token_url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=ctx) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = _error_text(exc)
            if exc.code in (400, 401, 403):
                raise OAuth2Error(f"{self.what}: token endpoint refused ({exc.code}): {detail}") from None
            raise OSError(f"{self.what}: token endpoint answered {exc.code}: {detail}") from None
        except ValueError as exc:  # not JSON
            raise OSError(f"{self.what}: token endpoint sent no JSON: {exc}") from None
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise OAuth2Error(f"{self.what}: token endpoint answered without an access_token")
        try:
            lifetime = float(payload.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError):
            lifetime = DEFAULT_LIFETIME
        return token, max(lifetime, 1.0)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(exc.read() or b"{}")
    except (ValueError, OSError):
        return exc.reason or "no detail"
    if not isinstance(data, dict):
        return "no detail"
    parts = [str(data.get(k)) for k in ("error", "error_description") if data.get(k)]
    return ": ".join(parts)[:300] or "no detail"
