"""config.yaml as pydantic models.

`load_config(path)` returns a validated `Config` or raises `ConfigError` whose `errors` name each problem by
its YAML path (``odoo[0].api: Input should be 'xmlrpc' or 'json2'``). Durations accept ``30s``, ``5m``,
``2h``, ``5d`` (or plain seconds), sizes ``25MiB``, ``10MB``, ``512k`` (or plain bytes). Secrets are never
inline: ``*_env`` names an environment variable, ``*_file`` a file; `resolve_secret` reads them late so
that they never sit in a model that might be logged.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1024,
    "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1000**3, "gb": 1000**3, "gib": 1024**3,
}


def parse_duration(value: Any) -> float:
    """``"5m"`` -> 300.0; numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration like 30s, 5m, 2h or 5d")
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m, 2h or 5d")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def parse_size(value: Any) -> int:
    """``"25MiB"`` -> 26214400; numbers are bytes."""
    if isinstance(value, bool):
        raise ValueError("a size like 25MiB")
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size like 512KiB, 25MiB or 1GB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_mode(value: Any) -> int:
    """File mode: 0o660 / "0660" / "660" (octal strings) or an int."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).removeprefix("0o"), 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal file mode like 0o660") from None


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> str:
    """An IP address or a host name (RFC 1123 labels), syntax only: nothing is resolved."""
    if re.fullmatch(r"[0-9.]+", host):  # looks like IPv4: must be one (300.1.1.1 is not a host name either)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv4 address") from None
        return host
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
        return host
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host


def check_port(port: int, *, any_port: bool = False) -> int:
    low = 0 if any_port else 1
    if isinstance(port, bool) or not low <= port <= 65535:
        raise ValueError(f"port {port} is out of range ({low}-65535)")
    return port


def split_host_port(text: str, *, default_port: int | None = None, any_port: bool = False) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> (host, port), checked (syntax only, nothing is resolved). With
    `default_port` the port may be left out (``HOST``, ``[IPv6]``, or a bare IPv6 address). `any_port` allows
    port 0 (a listener on a port the kernel picks: tests)."""
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:25")
        if ":" not in host:
            raise ValueError(f"{text!r}: only an IPv6 address goes in brackets")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        if default_port is None:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets with its port, e.g. [::1]:25")
        host = text
    else:
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} must be HOST:PORT (an IPv6 address as [ADDRESS]:PORT)")
        port = default_port
    elif not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"{text!r}: the port must be a number")
    else:
        port = check_port(int(port_text), any_port=any_port)
    if not host:
        raise ValueError(f"{text!r}: the host is missing")
    return check_host(host), port


def _bind(value: str) -> str:
    split_host_port(value, any_port=True)
    return value


def _nameserver(value: str) -> str:
    split_host_port(value, default_port=53)
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
FileMode = Annotated[int, BeforeValidator(parse_mode)]
Size = Annotated[int, BeforeValidator(parse_size)]
Port = Annotated[int, AfterValidator(check_port)]
Host = Annotated[str, AfterValidator(check_host)]
HostPort = Annotated[str, AfterValidator(_bind)]  # "host:port" / "[v6]:port" to listen on
Nameserver = Annotated[str, AfterValidator(_nameserver)]  # "host", "host:port", "[v6]:port", bare IPv6


class ConfigError(Exception):
    """Invalid configuration; `errors` lists ``"yaml.path: message"`` strings."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_INLINE_SECRETS = ("password", "secret", "api_key", "token", "verp_secret", "client_secret", "refresh_token",
                   "dsn")


class _SecretHolder(_Model):
    """Mixin validator: refuse inline secrets with a message that says what to do instead."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _INLINE_SECRETS:
                if key in data and f"{key}_env" in cls.model_fields:
                    raise ValueError(
                        f"inline secret '{key}' is not allowed: use {key}_env (environment variable) "
                        f"or {key}_file (path to a file)"
                    )
        return data


def resolve_secret(env: str | None, file: str | Path | None, *, what: str) -> str:
    """Read a secret from the named environment variable or file; raise ConfigError if absent."""
    if env:
        value = os.environ.get(env)
        if value:
            return value
        if not file:
            raise ConfigError([f"{what}: environment variable {env} is not set"])
    if file:
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            raise ConfigError([f"{what}: cannot read secret file {file}: {exc.strerror}"]) from exc
    raise ConfigError([f"{what}: no secret configured (set {what}_env or {what}_file)"])


class TlsConfig(_Model):
    cert_file: Path
    key_file: Path
    # Refuse MAIL before STARTTLS (submission from Odoo over a network should set this).
    required: bool = False


class AuthConfig(_Model):
    """SMTP AUTH for the submission listener: a file of ``user:password`` lines (one per line)."""

    users_file: Path


def _listener_bind(value: str) -> str:
    if value.startswith("unix:"):
        if len(value) <= 5:
            raise ValueError("unix: needs a path")
        return value
    return _bind(value)


class ListenerConfig(_Model):
    # policy: Postfix's check_policy_service asks it about every RCPT (gateway/intake/policy.py)
    kind: Literal["smtp", "lmtp", "submission", "policy"]
    bind: Annotated[str, AfterValidator(_listener_bind)] = Field(
        description='"host:port", "[IPv6]:port" or, for LMTP and policy, "unix:/path/to/socket"')
    hostname: str | None = None  # name in the banner and EHLO; default: the machine's FQDN
    banner: str = "ESMTP ready"  # never a version string
    max_message_size: Size = parse_size("25MiB")
    max_recipients: int = Field(100, ge=1)
    max_line_length: int = Field(65536, ge=1000)  # RFC 5321 needs 1000; longer DATA lines are refused
    # Deadlines (Postfix's per-request deadline model): a command line must arrive whole within idle_timeout; a
    # DATA phase within data_timeout plus one second per min_data_rate octets received. Trickling bytes does
    # not extend either. The client hears "421 4.4.2 ... timeout exceeded" when one passes.
    idle_timeout: Duration = Field(parse_duration("5m"), gt=0)
    data_timeout: Duration = Field(parse_duration("5m"), gt=0)
    min_data_rate: Size = Field(500, ge=1)  # octets per second
    max_sessions: int = Field(500, ge=1)
    tls: TlsConfig | None = None
    auth: AuthConfig | None = None
    socket_mode: FileMode = 0o660  # for unix sockets (Postfix's lmtp client must reach it)
    # Whose XFORWARD (the original client's address, name, HELO and protocol, sent by Postfix with
    # lmtp_send_xforward_command / smtp_send_xforward_command) is believed: CIDRs on a TCP listener, "unix" on a
    # unix socket (whoever may open it). Empty: XFORWARD is neither offered nor accepted.
    trusted_relays: list[str] = []

    @model_validator(mode="after")
    def _check_bind(self) -> ListenerConfig:
        if self.bind.startswith("unix:") and self.kind not in ("lmtp", "policy"):
            raise ValueError(f"bind {self.bind!r}: unix: sockets are only for kind: lmtp and kind: policy")
        return self

    @model_validator(mode="after")
    def _check_relays(self) -> ListenerConfig:
        if self.kind == "policy" and (self.tls or self.auth or self.trusted_relays):
            raise ValueError("a policy listener takes no tls, auth or trusted_relays")
        for entry in self.trusted_relays:
            if entry == "unix":
                if not self.bind.startswith("unix:"):
                    raise ValueError('trusted_relays: "unix" is for a listener bound to a unix: socket')
                continue
            if self.bind.startswith("unix:"):
                raise ValueError(f'trusted_relays: {entry!r}: a unix: socket has no peer address (use "unix")')
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f'trusted_relays: {entry!r} is neither "unix" nor an address or CIDR') from None
        return self

    @property
    def unix_path(self) -> str | None:
        return self.bind[5:] if self.bind.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.bind, any_port=True)


class FallbackConfig(_Model):
    """What to do with mail Odoo's chain would not route: deliver to a model (and record) or refuse."""

    action: Literal["deliver", "refuse"] = "refuse"
    model: str | None = None
    thread_id: int | None = None
    domains: list[str] = []  # empty: every domain of the instance

    @model_validator(mode="after")
    def _model_needed(self) -> FallbackConfig:
        if self.action == "deliver" and not self.model:
            raise ValueError("fallback action 'deliver' needs a model")
        return self


class ReferencePattern(_Model):
    """catchall+<ref>@domain where <ref> matches `regex`: find the record of `model` whose `field` equals it."""

    regex: str
    model: str
    field: str = "name"
    group: int | str = 0  # which regex group is the value to search

    @model_validator(mode="after")
    def _compiles(self) -> ReferencePattern:
        try:
            re.compile(self.regex)
        except re.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from exc
        return self


AuthAction = Literal["refuse", "hold", "tag"]
Intake = Literal["smtp", "lmtp", "pipe", "imap", "pop3"]


class SenderPolicyConfig(_Model):
    """What one Odoo instance does with mail its From domain did not authenticate (docs/authentication.md).
    refuse: 550 5.7.1 at the end of DATA (held instead when the mail was already accepted); hold: kept in the
    spool as `held` for an operator; tag: delivered with the verdict in Authentication-Results."""

    dmarc_reject: AuthAction = "refuse"  # DMARC fails and the domain publishes p=reject (pct applied)
    dmarc_quarantine: AuthAction = "hold"  # ... p=quarantine
    temperror: Literal["tempfail", "tag"] = "tempfail"  # 451 4.7.0, or deliver tagged; never a refusal
    internal_users: AuthAction = "hold"  # From is the address of an internal user of this instance
    partners: AuthAction = "tag"  # to an alias whose contact policy is partners or followers
    replies: AuthAction = "tag"  # a reply (or update) posted on an existing record


class SenderAuthConfig(_Model):
    """Sender authentication at intake: SPF, DKIM, DMARC, ARC; Authentication-Results for Odoo."""

    enabled: bool = False
    authserv_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]*$")  # default: the host name
    nameservers: list[str] = []  # "host" or "host:port"; empty: the system's resolver
    dns_timeout: Duration = parse_duration("5s")  # one DNS query
    timeout: Duration = parse_duration("20s")  # a whole message's checks, from the end of DATA
    dns_cache_size: int = Field(10000, ge=0)
    # MTAs in front (Postfix): their own address is never judged; the client is taken from XFORWARD or from
    # the Received header they add. Addresses or networks.
    trusted_relays: list[str] = []
    trusted_arc_sealers: list[str] = []  # ARC-Seal d= domains whose recorded results are believed
    intakes: list[Intake] = ["smtp", "lmtp", "pipe"]
    held_lifetime: Duration = parse_duration("14d")  # held mail older than this is deleted (logged)

    @model_validator(mode="after")
    def _check_relays(self) -> SenderAuthConfig:
        import ipaddress

        for item in self.trusted_relays:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"trusted_relays: {item!r} is not an address or network") from None
        return self


class OdooConfig(_SecretHolder):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    database: str
    login: str = "mailgw"
    password_env: str | None = None
    password_file: Path | None = None
    api: Literal["xmlrpc", "json2"] = "xmlrpc"
    domains: list[str] = Field(min_length=1)
    timeout: Duration = parse_duration("60s")
    max_concurrency: int = Field(4, ge=1, le=64)
    directory_refresh: Duration = parse_duration("5m")
    fallback: FallbackConfig = FallbackConfig()
    reference_patterns: list[ReferencePattern] = []
    # Models catchall+<model>-<id>@ may post to (None: any). That path checks no alias contact policy.
    subaddress_models: list[str] | None = None
    # Odoo 16 and older have no mail.alias.domain: the catchall domain comes from ICPs.
    legacy_directory: bool = False
    # Mirror of mail.gateway.loop.* checked at the door (None: read the ICPs from Odoo).
    loop_minutes: int | None = None
    loop_threshold: int | None = None
    auth: SenderPolicyConfig = SenderPolicyConfig()  # used when the top-level auth.enabled is true

    @model_validator(mode="after")
    def _normalise(self) -> OdooConfig:
        if not (self.password_env or self.password_file):
            raise ValueError("set password_env or password_file (the Odoo password or API key)")
        if not re.match(r"^https?://", self.url):
            raise ValueError("url must start with http:// or https://")
        object.__setattr__(self, "domains", [d.strip().lower().rstrip(".") for d in self.domains])
        return self

    def password(self) -> str:
        return resolve_secret(self.password_env, self.password_file, what=f"odoo[{self.name}].password")


class SpoolConfig(_SecretHolder):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path | None = None  # sqlite; default: <state_dir>/spool.sqlite3
    # Group commit: a commit waits at most this long for more writers to join it.
    commit_window: Duration = parse_duration("0s")
    max_batch: int = Field(256, ge=1)
    # postgres (docs/scale-out.md). The DSN (postgresql://user:password@host:port/database) is a secret.
    dsn_env: str | None = None
    dsn_file: Path | None = None
    db_schema: str = Field("mailgw", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,39}$")
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")  # default: the host name
    lease: Duration = Field(parse_duration("30s"), ge=1.0)
    pool_size: int = Field(10, ge=2, le=200)
    connect_timeout: Duration = Field(parse_duration("5s"), gt=0)
    statement_timeout: Duration = Field(parse_duration("30s"), gt=0)

    @model_validator(mode="after")
    def _backend_keys(self) -> SpoolConfig:
        if self.backend == "postgres":
            if not (self.dsn_env or self.dsn_file):
                raise ValueError("backend postgres needs dsn_env or dsn_file (the database URL is a secret)")
            if self.path is not None:
                raise ValueError("path is for the sqlite backend; postgres is reached through dsn_env/dsn_file")
        elif self.dsn_env or self.dsn_file:
            raise ValueError("dsn_env/dsn_file are for backend: postgres")
        return self

    def dsn(self) -> str:
        return resolve_secret(self.dsn_env, self.dsn_file, what="spool.dsn")


class DeliveryConfig(_Model):
    concurrency: int = Field(8, ge=1, le=256)
    retry_initial: Duration = parse_duration("30s")
    retry_max: Duration = parse_duration("1h")
    lifetime: Duration = parse_duration("5d")
    poll_interval: Duration = parse_duration("1s")
    # After this many consecutive transient failures an instance's breaker opens for `breaker_cooldown`.
    breaker_threshold: int = Field(5, ge=1)
    breaker_cooldown: Duration = parse_duration("30s")
    crash_limit: int = Field(3, ge=1)  # a message that crashed the worker this often is parked


class RoutingConfig(_Model):
    # Refuse (550) or discard mail with Auto-Submitted: auto-* addressed to aliases. Odoo itself accepts it.
    auto_submitted: Literal["accept", "refuse", "discard"] = "accept"
    # Refuse a sender with 451 at the door once Odoo's own loop guard would drop its mail.
    loop_guard: bool = True
    reply_cache_size: int = Field(10000, ge=0)
    reply_cache_ttl: Duration = parse_duration("1h")


class BounceConfig(_SecretHolder):
    verp: bool = True
    verp_secret_env: str | None = None
    verp_secret_file: Path | None = None
    # Forward soft and policy bounces to Odoo as well (Odoo would count them as hard ones).
    forward_soft: bool = False
    # Other permanent failures (policy refusal, expiry, unusable address) show as a delivery failure on the
    # recipient's notification in Odoo, without counting a bounce (docs/odoo.md §9).
    report_failures: bool = True

    def verp_secret(self) -> bytes | None:
        """The VERP key, or None (VERP off) when VERP is off, no secret is configured, or it cannot be read. A
        missing secret is not fatal: mail flows with Odoo's static bounce address; `verp_warning()` says why."""
        if not self.verp or not (self.verp_secret_env or self.verp_secret_file):
            return None
        try:
            return resolve_secret(self.verp_secret_env, self.verp_secret_file, what="bounce.verp_secret").encode()
        except ConfigError:
            return None

    def verp_warning(self) -> str | None:
        if not self.verp:
            return None
        if not (self.verp_secret_env or self.verp_secret_file):
            return "bounce.verp is on but no verp_secret_env/verp_secret_file is set: VERP is off"
        try:
            resolve_secret(self.verp_secret_env, self.verp_secret_file, what="bounce.verp_secret")
        except ConfigError as exc:
            return f"{'; '.join(exc.errors)}: VERP is off"
        return None


class DkimConfig(_Model):
    """One signing key. Two entries for one domain (an RSA and an Ed25519 key, RFC 8463) sign every message
    twice; receivers use the signature they can verify."""

    domain: str
    selector: str
    key_file: Path
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


def parse_rate(value: Any) -> float:
    """``"10/s"``, ``"600/m"``, ``"3600/h"`` (or a plain number per second) -> messages per second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a rate like 10/s, 600/m or 3600/h")
    return float(m.group(1)) / _DURATION_UNITS[m.group(2)]


Rate = Annotated[float, BeforeValidator(parse_rate), Field(gt=0)]


class RelayConfig(_SecretHolder):
    host: Host
    port: Port = 25
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # trust anchors for the relay's certificate (default: the system's)
    concurrency: int = Field(10, ge=1, le=1000)  # SMTP sessions to the relay at once
    rate: Rate | None = None  # messages per second the relay takes (e.g. "14/s", "30/m"); None: no limit


class DestinationConfig(_Model):
    """Limits for mail to one destination: recipient `domains`, and/or domains whose MX host names end in one
    of `mx` (``google.com`` covers every Google Workspace domain). Built-in entries for the big providers
    (gateway/outbound/destinations.py) take the keys an entry of the same name sets."""

    domains: list[str] = []
    mx: list[str] = []
    concurrency: int = Field(10, ge=1, le=1000)  # SMTP sessions at once
    rate: Rate | None = None  # messages per second at most; None: only the adaptive limit after throttling


class SessionReuseConfig(_Model):
    """One SMTP session carries several messages to the same host (RSET before each reuse)."""

    max_messages: int = Field(100, ge=1)
    max_age: Duration = parse_duration("5m")
    idle_timeout: Duration = parse_duration("10s")


class ThrottleConfig(_Model):
    """What a 421 or 4.7.x "slow down" reply does to a destination (AIMD): the rate is multiplied by `decrease`,
    the sessions halved, and no new session opens for `pause`; then every minute without such a reply gives back
    `increase` of the rate it had when throttled (and one session), up to the configured limits. A destination
    without a configured rate drops its learned limit after `forget` without a throttling reply."""

    decrease: float = Field(0.5, gt=0, lt=1)
    increase: float = Field(0.1, gt=0)
    pause: Duration = parse_duration("60s")
    min_rate: Rate = parse_rate("1/m")
    forget: Duration = parse_duration("1h")


class MtaStsConfig(_Model):
    enabled: bool = True  # direct MX delivery only; a relay applies its own policy
    https_port: int = Field(443, ge=1, le=65535)  # of the policy host (tests use another)
    ca_file: Path | None = None  # trust anchors for policy hosts and MX certificates (default: the system's)
    timeout: Duration = parse_duration("20s")  # policy fetch (RFC 8461 §3.3 suggests a minute at most)


class TlsReportConfig(_Model):
    enabled: bool = True  # count TLS successes/failures per policy domain (RFC 8460), one file per day
    organization: str | None = None  # organization-name in the reports (default: outbound.helo_name)
    contact: str | None = None  # contact-info, e.g. mailto:postmaster@example.com


class OutboundConfig(_Model):
    relay: RelayConfig | None = None  # None: deliver to the recipients' MX
    dkim: list[DkimConfig] = []
    concurrency: int = Field(20, ge=1, le=512)  # messages in delivery at once
    retry_initial: Duration = parse_duration("5m")
    retry_max: Duration = parse_duration("2h")
    lifetime: Duration = parse_duration("5d")
    helo_name: str | None = None  # EHLO, Received, DSNs and generated Message-Ids (default: the machine's FQDN)
    smtp_port: Port = 25  # port of the recipients' MX hosts (tests use another)
    # Resolvers for MX lookups, "host" or "host:port" (empty: the system's /etc/resolv.conf).
    nameservers: list[Nameserver] = []
    timeout: Duration = parse_duration("5m")  # per SMTP command (RFC 5321 §4.5.3.2)
    connect_timeout: Duration = parse_duration("30s")
    sessions: SessionReuseConfig = SessionReuseConfig()
    destinations: dict[str, DestinationConfig] = {}  # name -> limits ("default": every other domain)
    throttle: ThrottleConfig = ThrottleConfig()
    mta_sts: MtaStsConfig = MtaStsConfig()
    tls_reports: TlsReportConfig = TlsReportConfig()


class OAuth2Config(_SecretHolder):
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


class MailboxBase(_SecretHolder):
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


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsConfig(_Model):
    bind: HostPort | None = None  # "127.0.0.1:9925" serves /metrics and /healthz


class DnsCheckConfig(_Model):
    interval: Duration | None = None  # periodic dns-check inside the daemon (None: off)
    nameservers: list[Nameserver] = []  # "host" or "host:port"; empty: the system's resolver
    selector: str | None = None
    ip: str | None = None
    expect_mx: list[str] = []


class Config(_Model):
    state_dir: Path = Path("./var")
    listeners: list[ListenerConfig] = []
    odoo: list[OdooConfig] = []
    spool: SpoolConfig = SpoolConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    routing: RoutingConfig = RoutingConfig()
    bounce: BounceConfig = BounceConfig()
    outbound: OutboundConfig = OutboundConfig()
    imap: list[ImapConfig] = []
    pop3: list[Pop3Config] = []
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    dns_check: DnsCheckConfig = DnsCheckConfig()
    auth: SenderAuthConfig = SenderAuthConfig()
    drain_timeout: Duration = parse_duration("30s")

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        names = [o.name for o in self.odoo]
        if len(set(names)) != len(names):
            raise ValueError("odoo instance names must be unique")
        owner: dict[str, str] = {}
        for inst in self.odoo:
            for dom in inst.domains:
                if dom in owner:
                    raise ValueError(f"domain {dom} belongs to both {owner[dom]} and {inst.name}")
                owner[dom] = inst.name
        for mbox in [*self.imap, *self.pop3]:
            if mbox.instance is not None and mbox.instance not in names:
                raise ValueError(f"mailbox {mbox.name}: unknown odoo instance {mbox.instance!r}")
        return self

    @property
    def spool_path(self) -> Path:
        return self.spool.path or (self.state_dir / "spool.sqlite3")

    @functools.cached_property
    def domain_owner(self) -> dict[str, str]:
        """Mail domain -> the name of the Odoo instance it belongs to (domains are stored lower-case)."""
        return {dom: inst.name for inst in self.odoo for dom in inst.domains}

    def instance_for_domain(self, domain: str) -> OdooConfig | None:
        name = self.domain_owner.get(domain.lower().rstrip("."))
        return self.instance(name) if name is not None else None

    def instance(self, name: str) -> OdooConfig:
        for inst in self.odoo:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def secret_problems(self) -> list[str]:
        """One line per secret the config names that cannot be read now, and what will not work without it (the
        values are never returned). Not config errors: the daemon runs without them and says so at start;
        `check-config` prints them as warnings. (VERP has its own: `bounce.verp_warning()`.)"""
        out: list[str] = []

        def check(read: Any, consequence: str) -> None:
            try:
                read()
            except ConfigError as exc:
                out.append(f"{'; '.join(exc.errors)}: {consequence}")

        for inst in self.odoo:
            check(inst.password, f"nothing can be delivered to Odoo instance {inst.name} and its aliases cannot be "
                  "read; its mail waits in the spool (deferred, never bounced), and without a cached alias "
                  "directory RCPT is answered 451")
        for box in [*self.imap, *self.pop3]:
            check(box.check_secrets, f"mailbox {box.name} is not read (the poller retries and logs it)")
        relay = self.outbound.relay
        if relay is not None and (relay.password_env or relay.password_file):
            check(lambda: resolve_secret(relay.password_env, relay.password_file, what="outbound.relay.password"),
                  "outbound mail through the relay waits in the spool (deferred) until it can log in")
        return out


def _yaml_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "json-or-python", "tagged-union")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError) -> list[str]:
    return [f"{_yaml_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()]


def _anchored(value: Any, base: Path) -> Any:
    """`value` with every relative path in it made absolute against `base` (None when nothing changed)."""
    if isinstance(value, Path):
        return None if value.is_absolute() else base / value
    if isinstance(value, str):
        # Socket binds are strings ("unix:PATH" beside "host:port"); only the unix: form holds a path.
        path = value[5:] if value.startswith("unix:") else None
        return None if path is None or path.startswith("/") else f"unix:{base / path}"
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            new = _anchored(getattr(value, name), base)
            if new is not None:
                changes[name] = new
        return value.model_copy(update=changes) if changes else None
    if isinstance(value, list | tuple):
        items = [_anchored(v, base) for v in value]
        if all(v is None for v in items):
            return None
        return type(value)(old if new is None else new for old, new in zip(value, items, strict=True))
    return None


def anchor_paths(cfg: Config, base_dir: Path) -> Config:
    """Every relative path of the config (state_dir, spool path, key, secret and users files, unix socket binds,
    whatever field holds a path) resolved against `base_dir`: the directory of the config file, for every command.
    `mailgw pipe` runs from Postfix's queue directory and `serve` from systemd's working directory; with paths
    taken from the current directory they would each find a different spool."""
    anchored = _anchored(cfg, base_dir)
    return cfg if anchored is None else anchored


def parse_config(data: Any, *, base_dir: Path | None = None) -> Config:
    """Validate a config mapping; with `base_dir` relative paths are resolved against it (see `anchor_paths`)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): the config must be a mapping"])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    return cfg if base_dir is None else anchor_paths(cfg, base_dir)


def load_config(path: str | Path) -> Config:
    """Load and validate; relative paths in it are taken from the directory of the config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"{path}: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(data, base_dir=Path(os.path.abspath(path)).parent)
