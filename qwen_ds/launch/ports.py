"""TCP ports on this host: is one free, pick one (--master-port and its auto)."""

from __future__ import annotations

import socket


def port_free(port: int) -> bool:
    """True when a TCP listener could bind port on every interface of this host now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free on this host now (the kernel's pick), for --master-port auto."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
