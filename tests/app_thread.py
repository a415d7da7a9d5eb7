"""An aiohttp app served on 127.0.0.1 from a background thread with its own event loop, for tests whose code
under test blocks (CLI commands run in-process)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class BackgroundApp:
    """``with BackgroundApp(make_app) as s: ... s.url``. ``make_app`` runs inside the thread's event loop
    (an app or a zero-argument callable returning one), so servers that need a running loop can be built."""

    def __init__(self, make_app, *, start_timeout: float = 60.0) -> None:
        self.make_app: Callable = make_app if callable(make_app) else (lambda: make_app)
        self.start_timeout = start_timeout
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundApp:
        self._thread.start()
        assert self._ready.wait(self.start_timeout), "server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        from aiohttp import web

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            runner = web.AppRunner(self.make_app())
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by __enter__
            self._error = exc
            self._ready.set()
