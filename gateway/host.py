"""Who this machine is, for banners, Received lines and generated Message-Ids."""

from __future__ import annotations

import socket


def default_hostname() -> str:
    """The machine's fully qualified name; `socket.getfqdn()` says "localhost" on hosts whose name only
    resolves through /etc/hosts to 127.0.0.1, so the plain host name is the better answer then."""
    fqdn = socket.getfqdn()
    if fqdn and not fqdn.startswith("localhost"):
        return fqdn
    return socket.gethostname() or fqdn or "localhost"
