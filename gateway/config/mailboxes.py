"""Mailboxes the gateway polls (IMAP, POP3) and their OAuth 2.0 logins."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from gateway.config.types import (
    Duration,
    Host,
    Port,
    SecretHolder,
    Size,
    parse_duration,
    parse_size,
    resolve_secret,
)


class OAuth2Config(SecretHolder):
    """OAuth 2.0 for a mailbox (SASL XOAUTH2, as Microsoft 365 and Google require): the gateway gets its access
    tokens from `token_url` itself. With a refresh token (Google; Microsoft delegated access) it uses the
    refresh_token grant; without one the client_credentials grant (Microsoft 365 app-only access, scope
    https://outlook.office365.com/.default)."""

    token_url: str
    client_id: str
    client_secret_env: str | None = None
    client_secret_file: Path | None = None
    refresh_token_env: str | None = None
    refresh_token_file: Path | None = None
    scope: str | None = None
    ca_file: Path | None = None  # for a token endpoint behind a private CA

    @model_validator(mode="after")
    def _check(self) -> OAuth2Config:
        url = urlsplit(self.token_url)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in ("127.0.0.1", "::1", "localhost")):
            raise ValueError("token_url must be https:// (http only to a loopback address)")
        if not self.has_refresh_token and not (self.client_secret_env or self.client_secret_file):
            raise ValueError("set refresh_token_env/_file (refresh_token grant) or client_secret_env/_file "
                             "(client_credentials grant)")
        return self

    @property
    def has_refresh_token(self) -> bool:
        return bool(self.refresh_token_env or self.refresh_token_file)

    def client_secret(self, what: str) -> str | None:
        if not (self.client_secret_env or self.client_secret_file):
            return None  # a public client (refresh_token grant)
        return resolve_secret(self.client_secret_env, self.client_secret_file, what=f"{what}.oauth2.client_secret")

    def refresh_token(self, what: str) -> str | None:
        if not self.has_refresh_token:
            return None
        return resolve_secret(self.refresh_token_env, self.refresh_token_file, what=f"{what}.oauth2.refresh_token")


class MailboxBase(SecretHolder):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    host: Host
    port: Port | None = None
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    ca_file: Path | None = None
    user: str
    password_env: str | None = None
    password_file: Path | None = None
    oauth2: OAuth2Config | None = None  # instead of a password: SASL XOAUTH2 with tokens the gateway fetches
    instance: str | None = None
    recipient: str | None = None  # address routing assumes when the headers carry none of ours
    max_message_size: Size = parse_size("25MiB")
    poll_interval: Duration = parse_duration("60s")
    timeout: Duration = parse_duration("60s")

    @model_validator(mode="after")
    def _secret_needed(self) -> MailboxBase:
        has_password = bool(self.password_env or self.password_file)
        if self.oauth2 is not None and has_password:
            raise ValueError("set either a password (password_env/_file) or oauth2, not both")
        if self.oauth2 is None and not has_password:
            raise ValueError("set password_env or password_file (or oauth2)")
        return self

    def password(self) -> str:
        return resolve_secret(self.password_env, self.password_file, what=f"{self.name}.password")

    def check_secrets(self) -> None:
        """Raise ConfigError when a secret this mailbox needs cannot be read (its value is never returned)."""
        if self.oauth2 is None:
            self.password()
        else:
            self.oauth2.client_secret(self.name)
            self.oauth2.refresh_token(self.name)


class ImapConfig(MailboxBase):
    folder: str = "INBOX"
    after: str = "seen"  # seen | move:<folder> | delete
    idle: bool = True
    idle_renew: Duration = parse_duration("25m")  # re-IDLE before the 29-minute server limit
    batch_size: int = Field(50, ge=1, le=1000)

    @model_validator(mode="after")
    def _check_after(self) -> ImapConfig:
        if not (self.after in ("seen", "delete") or (self.after.startswith("move:") and len(self.after) > 5)):
            raise ValueError("after must be seen, delete or move:<folder>")
        return self


class Pop3Config(MailboxBase):
    @model_validator(mode="after")
    def _no_oauth2(self) -> Pop3Config:
        if self.oauth2 is not None:
            raise ValueError("oauth2 is implemented for IMAP mailboxes only; POP3 logs in with a password")
        return self
