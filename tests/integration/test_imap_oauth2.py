"""XOAUTH2 mailboxes against a real Dovecot whose oauth2 passdb checks every token with a real (loopback)
authorization server: the poller fetches its own access tokens, logs in with them, survives a revoked token,
and a refused grant is an authentication error that names the provider's reason and never a secret."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.commands import imap as imap_command
from gateway.config import parse_config
from gateway.exitcodes import EX_NOPERM
from gateway.intake.imap import ImapPoller
from tests.integration.dovecot import (
    DovecotServer,
    MailUser,
    mailbox_config_dict,
    message,
    why_unavailable,
)
from tests.integration.oauth2_idp import OAuth2Provider
from tests.integration.test_imap import running
from tests.waiting import wait_until

USER = "oauth-box"


@pytest.fixture(scope="module")
def idp() -> Iterator[OAuth2Provider]:
    with OAuth2Provider(f"{USER}@example.test") as provider:
        yield provider


@pytest.fixture(scope="module")
def oauth_dovecot(idp: OAuth2Provider) -> Iterator[DovecotServer]:
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    server = DovecotServer(oauth2_introspection_url=idp.introspection_url)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def oauth_config(server: DovecotServer, user: MailUser, idp: OAuth2Provider, tmp_path: Path,
                 secret: str | None = None, **oauth2: Any) -> dict[str, Any]:
    cfg = mailbox_config_dict(server, user, tmp_path / "state")
    box = cfg["imap"][0]  # type: ignore[index]
    del box["password_file"]
    secret_file = tmp_path / "client.secret"
    secret_file.write_text((secret or idp.client_secret) + "\n")
    box["oauth2"] = {"token_url": idp.token_url, "client_id": idp.client_id, "client_secret_file": str(secret_file),
                     "scope": "https://outlook.office365.com/.default", **oauth2}
    return cfg


async def test_poller_logs_in_with_its_own_tokens_and_survives_a_revoked_one(
        oauth_dovecot: DovecotServer, idp: OAuth2Provider, tmp_path: Path) -> None:
    user = oauth_dovecot.add_user(USER)
    for i in range(3):
        oauth_dovecot.append(user, message(i, to=user.address))
    config = parse_config(oauth_config(oauth_dovecot, user, idp, tmp_path))
    before = len(idp.requests)
    with capture_logs() as logs:
        async with running(lambda c, s: ImapPoller(c.imap[0], c, s), config) as (poller, _spool):
            await wait_until(lambda: poller.stats["flagged"] == 3, what="3 messages spooled and flagged")
            grants = idp.requests[before:]
            assert [g["grant_type"] for g in grants] == ["client_credentials"]
            assert grants[0]["scope"] == "https://outlook.office365.com/.default"
            assert all("\\Seen" in f for f in oauth_dovecot.flags(user).values())

            # The provider revokes the token the poller holds; Dovecot drops the session (restart).
            idp.revoke_all()
            oauth_dovecot.restart()
            oauth_dovecot.append(user, message(7, to=user.address))
            await wait_until(lambda: poller.stats["flagged"] == 4, timeout=30, what="reconnect with a new token")
            assert len(idp.requests) - before == 2  # the cached token was refused once, then a fresh one
    assert any(e.get("event") == "imap.connected" for e in logs)  # captured: the next check means something
    text = repr(logs)
    assert idp.client_secret not in text and not any(t in text for t in idp.tokens)


async def test_refused_grant_is_an_auth_error_with_the_providers_reason(
        oauth_dovecot: DovecotServer, idp: OAuth2Provider, tmp_path: Path) -> None:
    user = oauth_dovecot.add_user(USER)
    config = parse_config(oauth_config(oauth_dovecot, user, idp, tmp_path, secret="wrong-secret"))
    out = io.StringIO()
    assert await imap_command.test_mailbox(config.imap[0], lambda line: print(line, file=out)) == EX_NOPERM
    assert "invalid_client" in out.getvalue() and "wrong-secret" not in out.getvalue()

    good = parse_config(oauth_config(oauth_dovecot, user, idp, tmp_path / "good"))
    out = io.StringIO()
    assert await imap_command.test_mailbox(good.imap[0], lambda line: print(line, file=out)) == 0, out.getvalue()
    assert "login: ok" in out.getvalue() and "XOAUTH2" in out.getvalue()


async def test_refresh_token_grant(oauth_dovecot: DovecotServer, idp: OAuth2Provider, tmp_path: Path) -> None:
    user = oauth_dovecot.add_user(USER)
    refresh = tmp_path / "refresh.token"
    refresh.write_text(idp.refresh_token)
    cfg = oauth_config(oauth_dovecot, user, idp, tmp_path, refresh_token_file=str(refresh))
    del cfg["imap"][0]["oauth2"]["client_secret_file"]  # a public client: refresh token only
    config = parse_config(cfg)
    before = len(idp.requests)
    assert await imap_command.test_mailbox(config.imap[0], lambda _line: None) == 0
    assert idp.requests[before]["grant_type"] == "refresh_token" and "client_secret" not in idp.requests[before]


def test_oauth2_config_rules(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    base = {"name": "m", "host": "imap.example.com", "user": "u@example.com"}
    oauth = {"token_url": "https://login.example.com/token", "client_id": "c", "client_secret_env": "X"}
    parse_config({"imap": [{**base, "oauth2": oauth}]})
    bad = [
        ({**base}, "password_env or password_file (or oauth2)"),
        ({**base, "password_env": "P", "oauth2": oauth}, "either a password"),
        ({**base, "oauth2": {**oauth, "token_url": "http://login.example.com/token"}}, "https://"),
        ({**base, "oauth2": {"token_url": oauth["token_url"], "client_id": "c"}}, "refresh_token_env"),
        ({**base, "oauth2": {**oauth, "client_secret": "inline"}}, "inline secret"),
    ]
    for box, needle in bad:
        with pytest.raises(ConfigError) as info:
            parse_config({"imap": [box]})
        assert needle in str(info.value), (box, str(info.value))
    with pytest.raises(ConfigError, match="IMAP mailboxes only"):
        parse_config({"pop3": [{**base, "oauth2": oauth}]})
