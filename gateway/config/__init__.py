"""config.yaml as pydantic models.

`load_config(path)` returns a validated `Config` or raises `ConfigError` whose `errors` name each problem by
its YAML path (``odoo[0].api: Input should be 'xmlrpc' or 'json2'``). Durations accept ``30s``, ``5m``,
``2h``, ``5d`` (or plain seconds), sizes ``25MiB``, ``10MB``, ``512k`` (or plain bytes). Secrets are never
inline: ``*_env`` names an environment variable, ``*_file`` a file; `resolve_secret` reads them late so
that they never sit in a model that might be logged.

The package by role: types.py (value types and validators, `ConfigError`, the base model, secrets), one module
per section (listeners, odoo, auth, spool, outbound, mailboxes), root.py (`Config`, the whole file) and
loading.py (YAML in, relative paths anchored). Import from `gateway.config`: the names below are its interface.
"""

from gateway.config.auth import AuthAction, Intake, SenderAuthConfig, SenderPolicyConfig
from gateway.config.listeners import AuthConfig, ListenerConfig, TlsConfig
from gateway.config.loading import anchor_paths, format_validation_error, load_config, parse_config
from gateway.config.mailboxes import ImapConfig, MailboxBase, OAuth2Config, Pop3Config
from gateway.config.odoo import (
    BounceConfig,
    DeliveryConfig,
    FallbackConfig,
    OdooConfig,
    ReferencePattern,
    RoutingConfig,
)
from gateway.config.outbound import (
    DestinationConfig,
    DkimConfig,
    MtaStsConfig,
    OutboundConfig,
    RelayConfig,
    SessionReuseConfig,
    ThrottleConfig,
    TlsReportConfig,
)
from gateway.config.root import Config, DnsCheckConfig, LoggingConfig, MetricsConfig
from gateway.config.spool import SpoolConfig
from gateway.config.types import (
    ConfigError,
    Duration,
    FileMode,
    Host,
    HostPort,
    Nameserver,
    Port,
    Rate,
    Size,
    check_host,
    check_port,
    parse_duration,
    parse_mode,
    parse_rate,
    parse_size,
    resolve_secret,
    split_host_port,
)

__all__ = [
    "AuthAction", "AuthConfig", "BounceConfig", "Config", "ConfigError", "DeliveryConfig", "DestinationConfig",
    "DkimConfig", "DnsCheckConfig", "Duration", "FallbackConfig", "FileMode", "Host", "HostPort", "ImapConfig",
    "Intake", "ListenerConfig", "LoggingConfig", "MailboxBase", "MetricsConfig", "MtaStsConfig", "Nameserver",
    "OAuth2Config", "OdooConfig", "OutboundConfig", "Pop3Config", "Port", "Rate", "ReferencePattern", "RelayConfig",
    "RoutingConfig", "SenderAuthConfig", "SenderPolicyConfig", "SessionReuseConfig", "Size", "SpoolConfig",
    "ThrottleConfig", "TlsConfig", "TlsReportConfig", "anchor_paths", "check_host", "check_port",
    "format_validation_error", "load_config", "parse_config", "parse_duration", "parse_mode", "parse_rate",
    "parse_size", "resolve_secret", "split_host_port",
]
