"""Running the app with uvicorn: `serve` (foreground, graceful shutdown on SIGINT/SIGTERM)
and `BackgroundServer` (a server in a background thread on a pre-bound loopback socket, for
tests, notebooks and benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from babelgate.errors import BabelgateError


def uvicorn_config(
    app: FastAPI, host: str, port: int, *, graceful_timeout: float = 30.0, log_level: str = "info"
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(graceful_timeout),
        access_log=log_level in ("debug", "trace"),
        server_header=False,
        lifespan="on",
    )


def serve(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    graceful_timeout: float = 30.0,
    log_level: str = "info",
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get `graceful_timeout` seconds to
    finish, then the model worker drains its queue and stops."""
    server = uvicorn.Server(
        uvicorn_config(app, host, port, graceful_timeout=graceful_timeout, log_level=log_level)
    )
    server.run()
    if not server.started:
        raise BabelgateError(f"the server could not start on {host}:{port} (is the port in use?)")


class BackgroundServer:
    """`with BackgroundServer(app) as srv: httpx.get(srv.url + "/health")` — uvicorn in a
    daemon thread on 127.0.0.1 and a free port chosen by the OS (no port race)."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", *, log_level: str = "warning"
    ) -> None:
        self.app = app
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = int(self.sock.getsockname()[1])
        self.server = uvicorn.Server(
            uvicorn_config(app, host, self.port, graceful_timeout=10, log_level=log_level)
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise BabelgateError("the background server did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: stop accepting, let in-flight requests finish, run the app's shutdown."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
