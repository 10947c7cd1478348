"""mailgw: the daemon side (everything with I/O). Pure logic lives in routing/ and bounce/."""

__version__ = "0.1.0"
