"""A TCP relay that can fall silent: a network partition for end-to-end fault tests."""

from __future__ import annotations

import socket
import threading
import time
from select import select


class SilentLink:
    """A TCP relay to PostgreSQL that can fall silent: it then carries no byte either way but
    closes nothing, which is what a network partition looks like to the server (no refusal, no
    reset: a query or a connection attempt just waits)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._silent = threading.Event()
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def silence(self) -> None:
        self._silent.set()

    def restore(self) -> None:
        self._silent.clear()

    def close(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self._target)
            thread = threading.Thread(target=self._carry, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _carry(self, client: socket.socket, upstream: socket.socket) -> None:
        with client, upstream:
            while not self._stopped.is_set():
                if self._silent.is_set():
                    time.sleep(0.05)
                    continue
                readable, _, _ = select([client, upstream], [], [], 0.1)
                for side in readable:
                    data = side.recv(65536)
                    if not data:
                        return
                    (upstream if side is client else client).sendall(data)
