"""Running the app under uvicorn: in the foreground (``prodimg serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import uvicorn

LOOPBACK = "127.0.0.1"


def uvicorn_config(app, host: str = LOOPBACK, port: int = 8080, log_level: str = "warning") -> uvicorn.Config:
    # The audit log records every request, so uvicorn's access log stays off.
    return uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=5
    )


def run_server(app, host: str = LOOPBACK, port: int = 8080, log_level: str = "info") -> None:
    uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


class BackgroundServer:
    """Serve ``app`` on a free loopback port in a daemon thread::

    with BackgroundServer(app) as server:
        httpx.get(server.url + "/healthz")
    """

    def __init__(self, app, host: str = LOOPBACK, startup_timeout: float = 30.0):
        self.app, self.host, self.startup_timeout = app, host, startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        self._server = uvicorn.Server(uvicorn_config(self.app, self.host, self.port))

        def serve() -> None:
            asyncio.run(self._server.serve(sockets=[sock]))

        self._thread = threading.Thread(target=serve, name="prodimg-test-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
