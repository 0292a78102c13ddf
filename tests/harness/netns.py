"""TCP relays between this process's network namespace and a test node's.

The real test node runs in a network namespace of its own, so nothing it does touches this
machine's network. Two kinds of traffic cross the boundary, both relayed by one asyncio loop in
a thread of the test process (sockets keep the namespace they were created in, so a socket made
by a thread that joined the node's namespace serves there while the loop stays here):

* **into the host** (:meth:`Relays.expose`): a listener inside the node's namespace, at the
  node's gateway address, forwards to a loopback port of this machine. The kubelet and pods
  reach the API server and PostgreSQL this way.
* **out of the API server** (:class:`EgressProxy`): the API server's ``cluster`` egress (logs,
  exec, port-forward, the service proxy, webhooks) goes through an HTTP CONNECT proxy on a unix
  socket, as konnectivity would carry it; destinations inside a registered namespace's subnets
  are dialled from inside that namespace, all others from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["NODE_GATEWAY", "EgressProxy", "Relays", "in_netns"]

#: The address inside a real test node's network namespace where this machine's loopback
#: services (the API server, PostgreSQL) are exposed; the API server advertises it.
NODE_GATEWAY = "10.200.0.1"

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(pid: int, call: Callable[[], T]) -> T:
    """``call()`` in a short-lived thread that joined the network namespace of ``pid``.

    Only that thread changes namespace (``setns`` acts on the calling thread); sockets it
    creates stay in the node's namespace after it ends.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into the network namespace of {pid}")
            finally:
                os.close(fd)
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name=f"netns-{pid}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    for _, writer in (a, b):
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Relays:
    """One asyncio loop in a daemon thread serving every relay; ``close()`` stops them all."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="relays", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(timeout=30)

    def expose(
        self, netns_pid: int, address: str, port: int, target_port: int | None = None
    ) -> None:
        """Listen on ``address:port`` inside ``netns_pid``'s namespace; forward each connection
        to ``127.0.0.1:target_port`` (default: the same port) of this namespace."""
        target = target_port or port

        def listener() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(128)
            sock.setblocking(False)
            return sock

        sock = in_netns(netns_pid, listener)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                writer.close()
                return
            await _splice((reader, writer), upstream)

        async def serve() -> asyncio.AbstractServer:
            return await asyncio.start_server(handle, sock=sock)

        self._servers.append(self.run(serve()))

    def serve_unix(
        self,
        path: Path,
        handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
    ) -> None:
        async def serve() -> asyncio.AbstractServer:
            return await asyncio.start_unix_server(handle, path=str(path))

        self._servers.append(self.run(serve()))

    async def dial(
        self, host: str, port: int, netns_pid: int | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if netns_pid is None:
            return await asyncio.open_connection(host, port)

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            return sock

        sock = await asyncio.to_thread(in_netns, netns_pid, make)
        try:
            await asyncio.wait_for(self._loop.sock_connect(sock, (host, port)), timeout=10)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.run(shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._servers.clear()


class EgressProxy:
    """The API server's ``cluster`` egress: HTTP CONNECT on a unix socket.

    ``route(cidr, netns_pid)`` sends destinations in ``cidr`` into that namespace; the rest are
    dialled from this one (kwok's simulated nodes and pods have addresses nothing answers on,
    so those connections fail, as they would in a real cluster with the node gone).
    """

    def __init__(self, relays: Relays, path: Path) -> None:
        self.path = path
        self._relays = relays
        self._routes: list[tuple[ipaddress.IPv4Network, int]] = []
        relays.serve_unix(path, self._handle)

    def route(self, cidr: str, netns_pid: int) -> None:
        self._routes.append((ipaddress.IPv4Network(cidr), netns_pid))

    def unroute(self, netns_pid: int) -> None:
        self._routes = [r for r in self._routes if r[1] != netns_pid]

    def _netns_for(self, host: str) -> int | None:
        with contextlib.suppress(ValueError):
            address = ipaddress.IPv4Address(host)
            for network, pid in self._routes:
                if address in network:
                    return pid
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT":
                raise ValueError(f"not a CONNECT request: {method}")
            host, _, port = target.rpartition(":")
            upstream = await self._relays.dial(host.strip("[]"), int(port), self._netns_for(host))
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError) as error:
            with contextlib.suppress(Exception):
                writer.write(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{error}\r\n".encode())
                await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice((reader, writer), upstream)
