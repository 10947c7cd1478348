"""The building blocks of the config models: durations, sizes, rates and file modes as they are written in
config.yaml, host names, ports and binds (syntax only: nothing is resolved), `ConfigError`, the base model
and secrets (never inline: `resolve_secret` reads ``*_env`` or ``*_file`` late)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

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


def check_bind(value: str) -> str:
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
HostPort = Annotated[str, AfterValidator(check_bind)]  # "host:port" / "[v6]:port" to listen on
Nameserver = Annotated[str, AfterValidator(_nameserver)]  # "host", "host:port", "[v6]:port", bare IPv6


class ConfigError(Exception):
    """Invalid configuration; `errors` lists ``"yaml.path: message"`` strings."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_INLINE_SECRETS = ("password", "secret", "api_key", "token", "verp_secret", "client_secret", "refresh_token",
                   "dsn")


class SecretHolder(Model):
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




def parse_rate(value: Any) -> float:
    """``"10/s"``, ``"600/m"``, ``"3600/h"`` (or a plain number per second) -> messages per second."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h|d)\s*", str(value))
    if not m:
        raise ValueError(f"{value!r} is not a rate like 10/s, 600/m or 3600/h")
    return float(m.group(1)) / _DURATION_UNITS[m.group(2)]


Rate = Annotated[float, BeforeValidator(parse_rate), Field(gt=0)]
