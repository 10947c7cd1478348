"""Who this machine is, for banners, Received lines and generated Message-Ids."""

from __future__ import annotations

import socket


def default_hostname() -> str:
    return socket.getfqdn() or "localhost"
