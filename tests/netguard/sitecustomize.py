"""Blocks outbound network in every Python process of the test run (loaded through PYTHONPATH).

Loopback and Unix sockets stay open (PostgreSQL, the llama.cpp server, the service under test);
any other address, and any DNS lookup of a name that is not local, raises EgressBlockedError.
So a library that tries to download or phone home fails the test that triggered it.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


class EgressBlockedError(ConnectionRefusedError):
    pass


def _is_local_host(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if not isinstance(host, str):
        return False
    if host in _LOCAL_NAMES or host == socket.gethostname():
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback or host == "0.0.0.0"  # noqa: S104
    except ValueError:
        return False


def install() -> None:
    if getattr(socket, "_enclave_guarded", False):
        return
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def _check(sock: socket.socket, address: object) -> None:
        if sock.family == getattr(socket, "AF_UNIX", None):
            return
        host = address[0] if isinstance(address, tuple) else address
        if not _is_local_host(host):
            raise EgressBlockedError(f"network egress blocked in tests: connect to {address!r}")

    def connect(self: socket.socket, address: object) -> None:
        _check(self, address)
        return real_connect(self, address)  # type: ignore[arg-type]  # the guarded call passes its arguments on

    def connect_ex(self: socket.socket, address: object) -> int:
        _check(self, address)
        return real_connect_ex(self, address)  # type: ignore[arg-type]  # the guarded call passes its arguments on

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if not _is_local_host(host):
            raise EgressBlockedError(f"network egress blocked in tests: DNS lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]  # the guarded call passes its arguments on

    socket.socket.connect = connect  # type: ignore[method-assign]  # the guard replaces the socket method
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]  # the guard replaces the socket method
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]  # the guard replaces the resolver
    socket._enclave_guarded = True  # type: ignore[attr-defined]  # marker on a foreign module


if os.environ.get("ENCLAVE_BLOCK_EGRESS") == "1":
    install()
