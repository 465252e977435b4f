"""Running the app under uvicorn on a socket bound beforehand (so that a port in use is one
clear error, and port 0 picks a free one), and stopping it gracefully.

SIGTERM (or SIGINT): the gate closes (new requests get 503), uvicorn stops listening and
waits for the requests in flight, streams included, then the engine drains what is left
and stops; the process then exits 0 (130 after SIGINT, as other commands do).
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from lmforge.errors import LmforgeError
from lmforge.serve.engine import Engine
from lmforge.serve.guard import Gate


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; LmforgeError when the port is taken or the address
    is not this machine's."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise LmforgeError(f"--host {host}: {err.strerror}") from None
    # with its protocol (TCP) named, as asyncio wants it before it turns Nagle's algorithm off on
    # each connection (TCP_NODELAY): left on, a response written in two pieces (head, body) on a
    # kept-alive connection waits for the client's delayed ACK, 40 ms on Linux
    sock = socket.socket(info[0], socket.SOCK_STREAM, info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise LmforgeError(f"port {port} on {host} is in use; pick another with "
                               "--port") from None
        raise LmforgeError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, with the gate closed at the first signal and no signal raised again
    once it has shut down (uvicorn re-raises it, which would kill the process before the
    engine drains, with the signal's exit status)."""

    def __init__(self, config: uvicorn.Config, gate: Gate) -> None:
        super().__init__(config)
        self.gate = gate
        self.signals: list[int] = []

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gate.close()
        self.signals.append(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        before = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, engine: Engine, sock: socket.socket, *, gate: Gate,
          grace: float) -> int:
    """Serve `app` on `sock` until a signal, then drain: requests in flight get up to `grace`
    seconds, the engine's too. The exit code: 0, or 130 after SIGINT."""
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(grace) + 1,
                            lifespan="off", access_log=False)
    server = _Server(config, gate)
    try:
        server.run(sockets=[sock])
    finally:
        engine.drain(timeout=grace)
    return 130 if signal.SIGINT in server.signals else 0
