"""A minimal OAuth 2.0 authorization server on 127.0.0.1, for the XOAUTH2 tests (a real HTTP server).

- `POST /token` (RFC 6749): grant_type client_credentials (client_id + client_secret) or refresh_token
  (client_id + refresh_token); answers `{"access_token", "token_type", "expires_in"}`, or 400/401 with
  `{"error", "error_description"}` like real providers.
- `POST /introspect` (RFC 7662, what Dovecot's oauth2 passdb calls with `introspection_mode = post`): `token=…`
  -> `{"active": true, "username": …}` for a token it issued and has not revoked, else `{"active": false}`.
Each token is issued for `user` (the mailbox the app may open, as Microsoft 365 grants app-only access).
"""

from __future__ import annotations

import json
import secrets
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class OAuth2Provider:
    def __init__(self, user: str, *, client_id: str = "mailgw-test", expires_in: int = 3600):
        self.user = user
        self.client_id = client_id
        self.client_secret = secrets.token_urlsafe(16)
        self.refresh_token = secrets.token_urlsafe(16)
        self.expires_in = expires_in
        self.tokens: dict[str, str] = {}  # access token -> user
        self.requests: list[dict[str, str]] = []  # /token forms, secrets included (tests look at grant types)
        self.introspections = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                if self.path == "/token":
                    status, body = provider._token(form)
                elif self.path == "/introspect":
                    provider.introspections += 1
                    user = provider.tokens.get(form.get("token", ""))
                    status, body = 200, ({"active": True, "username": user} if user else {"active": False})
                else:
                    status, body = 404, {"error": "not_found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def introspection_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/introspect"

    def revoke_all(self) -> None:
        self.tokens.clear()

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append(form)
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client", "error_description": "unknown client"}
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if form.get("client_secret") != self.client_secret:
                return 401, {"error": "invalid_client", "error_description": "bad client secret"}
        elif grant == "refresh_token":
            if form.get("refresh_token") != self.refresh_token:
                return 400, {"error": "invalid_grant", "error_description": "refresh token revoked"}
        else:
            return 400, {"error": "unsupported_grant_type"}
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.user
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}

    def __enter__(self) -> OAuth2Provider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
