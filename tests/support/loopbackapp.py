"""What the loopback test servers (fault proxy, token server) share: their lifecycle.

A server here is an object holding state behind a lock, served on 127.0.0.1 by a threaded
``LoopbackHTTPServer`` whose handler class reaches the object as ``server.app``.
"""

from __future__ import annotations

import threading
from typing import TypeVar

from tests.support.registry import LoopbackHandler, LoopbackHTTPServer

AppT = TypeVar("AppT", bound="LoopbackApp")


class LoopbackApp:
    """Base of a loopback test server: start/stop, or use as a context manager.

    ``handler`` serves each request; subclasses guard their state with ``_lock``.
    """

    def __init__(self, handler: type[LoopbackHandler]) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self._server: LoopbackHTTPServer | None = None

    def start(self: AppT) -> AppT:
        self._server = LoopbackHTTPServer(self._handler, self)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self: AppT) -> AppT:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return f"127.0.0.1:{self._server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"
