"""What GatewaySMTP takes from aiosmtpd 1.4's internals, built once per class instead of once per connection.

aiosmtpd.SMTP.__init__ walks dir() of the protocol and of the handler on every connection to find its
smtp_*/auth_*/handle_* methods, and inspects signatures (about 0.6 ms per connection, a fifth of the CPU per
message). These caches give it the same answers. They depend on aiosmtpd's private names (`_AuthMechAttr`,
`__auth_mechanism_name__`, `_smtp_methods`), hence the pin to 1.4.x in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_DIR_CACHE: dict[type, list[str]] = {}


def hook_dir(obj: object, prefixes: tuple[str, ...]) -> list[str]:
    """The attribute names of `obj` that start with one of `prefixes` (a short, cached __dir__)."""
    cls = type(obj)
    names = _DIR_CACHE.get(cls)
    if names is None:
        names = [n for n in object.__dir__(obj) if n.startswith(prefixes)]
        _DIR_CACHE[cls] = names
    return names


_HOOKS: dict[int, tuple[object, dict[str, Callable[..., Any]]]] = {}


def handler_hooks(handler: object) -> dict[str, Callable[..., Any]]:
    """handle_* methods by command; one handler serves every session of a listener, so build it once."""
    cached = _HOOKS.get(id(handler))
    if cached is None or cached[0] is not handler:
        hooks = {attr[7:]: getattr(handler, attr) for attr in hook_dir(handler, ("handle_", "auth_"))
                 if attr.startswith("handle_")}
        cached = _HOOKS[id(handler)] = (handler, hooks)
    return cached[1]


class _SmtpMethods(dict):
    """aiosmtpd's command table (`self._smtp_methods.get(COMMAND)`), bound on lookup instead of per connection."""

    def __init__(self, proto: object):
        super().__init__()
        self.proto = proto

    def get(self, command: str, default: Any = None) -> Any:
        method = getattr(self.proto, f"smtp_{command}", None) if command.isalpha() else None
        return default if method is None else method

    def __contains__(self, command: object) -> bool:
        return isinstance(command, str) and self.get(command) is not None

    def keys(self) -> Any:
        return [n[5:] for n in hook_dir(self.proto, ("smtp_", "auth_")) if n.startswith("smtp_")]

    def items(self) -> Any:  # HELP lists the commands
        return [(name, getattr(self.proto, f"smtp_{name}")) for name in self.keys()]


def smtp_methods(proto: object) -> dict[str, Any]:
    return _SmtpMethods(proto)


_AUTH_NAMES: dict[tuple[type, type], list[tuple[str, str, bool]]] = {}


def auth_names(proto_cls: type, handler_cls: type) -> list[tuple[str, str, bool]]:
    """(mechanism, attribute, defined on the protocol) for auth_* methods, as aiosmtpd names them."""
    key = (proto_cls, handler_cls)
    if key not in _AUTH_NAMES:
        found: dict[str, tuple[str, str, bool]] = {}
        for cls, own in ((proto_cls, True), (handler_cls, False)):
            for attr in sorted(n for n in dir(cls) if n.startswith("auth_")):
                func = getattr(cls, attr)
                name = getattr(func, "__auth_mechanism_name__", attr.replace("auth_", "").replace("__", "-"))
                found[name] = (name, attr, own)
        _AUTH_NAMES[key] = list(found.values())
    return _AUTH_NAMES[key]
