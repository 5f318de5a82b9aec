"""Fail any test that tries to reach a non-loopback address.

Installed for every test by ``tests/conftest.py``: Python-level socket connects
(aiohttp, asyncio, urllib, the stdlib) to anything but 127.0.0.0/8, ::1 or a Unix
socket raise ``ConnectionRefusedError`` with a message naming the address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _allowed(address: Any, family: int) -> bool:
    if family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
        return ip.is_loopback
    except ValueError:
        return bool(host == "localhost")


def _check(sock: socket.socket, address: Any) -> None:
    if not _allowed(address, sock.family):
        raise ConnectionRefusedError(f"tests may not reach the network: connect to {address!r} refused")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host not in (None, "localhost") and not _is_ip(host):
        raise socket.gaierror(f"tests may not resolve {host!r}: use 127.0.0.1")
    return _real_getaddrinfo(host, *args, **kwargs)


def _is_ip(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@contextmanager
def loopback_only() -> Iterator[None]:
    """Refuse non-loopback connects and name resolution while active."""
    setattr(socket.socket, "connect", _connect)  # noqa: B010 - mypy rejects assigning a method
    setattr(socket.socket, "connect_ex", _connect_ex)  # noqa: B010
    socket.getaddrinfo = _getaddrinfo
    try:
        yield
    finally:
        setattr(socket.socket, "connect", _real_connect)  # noqa: B010
        setattr(socket.socket, "connect_ex", _real_connect_ex)  # noqa: B010
        socket.getaddrinfo = _real_getaddrinfo
