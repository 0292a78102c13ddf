"""A TCP proxy for outage tests: forwards 127.0.0.1:<port> to a server, and can cut every
connection at once, as a network failure or a database failover does.

It listens on loopback only, accepts a bounded number of connections, runs in a thread of
its own, and stops by itself after ``lifetime`` seconds even if a test forgets to close it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType

__all__ = ["Blackhole", "DroppingProxy"]


class DroppingProxy:
    """``127.0.0.1:port`` forwarded to ``target``; :meth:`drop_all` cuts every connection."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        max_connections: int = 256,
        lifetime: float = 900.0,
    ) -> None:
        self._target = (target_host, target_port)
        self._limit = max_connections
        self._lifetime = lifetime
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self.accepted = 0
        self.port = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")

    # ---------------------------------------------------------------- the event loop's side

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self._lifetime)
        self._server.close()
        self._cut()
        await self._server.wait_closed()

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if len(self._writers) >= self._limit * 2:
            client.close()
            return
        try:
            server_reader, server = await asyncio.open_connection(*self._target)
        except OSError:
            client.close()
            return
        self.accepted += 1
        self._writers.update((client, server))
        await asyncio.gather(self._pipe(client_reader, server), self._pipe(server_reader, client))
        self._writers.difference_update((client, server))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def _cut(self) -> int:
        cut = list(self._writers)
        for writer in cut:
            transport = writer.transport
            # abort(): an immediate reset, as when a connection dies, not a polite close.
            transport.abort()
        self._writers.clear()
        return len(cut) // 2

    # ---------------------------------------------------------------- the test's side

    def drop_all(self) -> int:
        """Cut every open connection now; returns how many there were. New connections are
        accepted again at once."""
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    async def _drop(self) -> int:
        return self._cut()

    def open_connections(self) -> int:
        return len(self._writers) // 2

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def __enter__(self) -> DroppingProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Blackhole:
    """``127.0.0.1:port`` that accepts connections and never answers (an unreachable database
    whose connect hangs until the client's timeout). Stops by itself after ``lifetime``."""

    def __init__(self, lifetime: float = 300.0) -> None:
        import socket

        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self._held: list[socket.socket] = []
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._socket.settimeout(0.2)
        while time.monotonic() < self._deadline:
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            self._held.append(connection)
        self.close()

    def connections(self) -> int:
        return len(self._held)

    def close(self) -> None:
        self._deadline = 0.0
        for connection in self._held:
            connection.close()
        self._socket.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
        self._thread.join(5)
