"""Access checks: the bearer token (PROTOCOL.md) and the Origin allow-list.

The token is compared in constant time. Browsers cannot set headers on a websocket, so ``/ws/...`` also
takes ``?ticket=``: a single-use ticket valid 30 s for that session, from ``POST /sessions/{id}/ticket`` with
the bearer header, so that the token never travels in a URL (``?token=`` is still accepted there, for older
clients; the access log masks it). The pages themselves (``GET /`` and ``GET /detect``) are public static content: the
browser must be able to load them before it knows any token.

The Origin check protects against cross-site websocket hijacking and cross-site offers, uploads and deletes:
every state-changing request (any method but GET, HEAD and OPTIONS) and every websocket is checked in the
middleware, so no endpoint can be left out. A browser always sends Origin there; it must be the server's own
(its host and port, as the request's Host header names them) or one of ``--allowed-origin``. A request without
Origin comes from a non-browser client, which the token (when set) guards. Behind a reverse proxy that
rewrites Host, name the public origin with ``--allowed-origin``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/"})
PUBLIC_PAGES = frozenset({"/detect"})  # public for GET only (the page); POST /detect is an upload
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # change nothing: no Origin check (websockets aside)


TICKET_SECONDS = 30.0


class AccessPolicy:
    def __init__(self, token: str | None = None, allowed_origins: tuple[str, ...] = ()) -> None:
        self.token = token
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)
        self._tickets: dict[str, tuple[str, float]] = {}  # ticket -> (session id, expiry)

    def issue_ticket(self, session_id: str) -> str:
        """A websocket ticket for ``session_id``: single use, valid TICKET_SECONDS. Browsers cannot set headers
        on a websocket; a ticket in its URL, got with the bearer header, keeps the token itself out of URLs
        (and out of any log that records them)."""
        now = time.monotonic()
        self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}  # expired ones go
        ticket = secrets.token_urlsafe(16)
        self._tickets[ticket] = (session_id, now + TICKET_SECONDS)
        return ticket

    def ticket_ok(self, request: web.Request) -> bool:
        """The websocket request carries an unused, unexpired ticket issued for the session in its path."""
        ticket = request.query.get("ticket")
        entry = self._tickets.pop(ticket, None) if ticket else None
        return (entry is not None and entry[1] > time.monotonic()
                and request.path == f"/ws/{entry[0]}")

    def token_ok(self, request: web.Request, *, allow_query: bool = False) -> bool:
        if self.token is None:
            return True
        given = None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            given = value.strip()
        elif allow_query:
            given = request.query.get("token")
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def origin_ok(self, request: web.Request) -> bool:
        """No Origin (not a browser), the server's own origin, or an allowed one."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/")
        if origin in self.allowed_origins:
            return True
        try:
            netloc = urlsplit(origin).netloc  # the scheme is not compared: a TLS proxy may sit in front
        except ValueError:
            return False
        return bool(netloc) and netloc.lower() == (request.host or "").lower()

    def middleware(self, on_refused: Callable[[web.Request, str], None] | None = None) -> Callable:
        """aiohttp middleware: 401 without the token on every path but the pages; 403 for a state-changing
        request or a websocket from another site's page. ``on_refused(request, reason)`` counts refusals."""

        @web.middleware
        async def check_access(request: web.Request,
                               handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            page = request.method in ("GET", "HEAD") and request.path in PUBLIC_PAGES
            websocket = request.path.startswith("/ws/")
            if request.path not in PUBLIC_PATHS and not page:
                if not (self.token_ok(request, allow_query=websocket) or (websocket and self.ticket_ok(request))):
                    if on_refused is not None:
                        on_refused(request, "auth")
                    return web.json_response({"error": "missing or wrong token (Authorization: Bearer TOKEN)"},
                                             status=401, headers={"WWW-Authenticate": "Bearer"})
            if (websocket or request.method not in SAFE_METHODS) and not self.origin_ok(request):
                if on_refused is not None:
                    on_refused(request, "origin")
                return web.json_response({"error": f"origin {request.headers.get('Origin')} not allowed (the "
                                                   f"server's own origin or --allowed-origin)"}, status=403)
            return await handler(request)

        return check_access


class RedactedAccessLogger(AbstractAccessLogger):
    """aiohttp's access log without secrets: a ``token`` in the query is replaced by ``***`` and a session id (the
    only key to a session) is cut to its first 6 characters, as in the rest of the server's log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s %s "%s %s" %s %s %.1f ms', request.remote, request.headers.get("Origin", "-"),
                         request.method, redact_line(request.path_qs), response.status, response.body_length,
                         time * 1000.0)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_SECRET_IN_LINE = re.compile(r"(/(?:ws|sessions)/)([^/?\s\"]{6})[^/?\s\"]*|([?&](?:token|ticket)=)[^&\s\"]*")


def redact_line(line: str) -> str:
    """Any session id cut to 6 characters and any token or ticket masked, wherever they sit in a log line:
    ``/ws/abcdef123...?token=s3cret`` -> ``/ws/abcdef…?token=***``."""
    return _SECRET_IN_LINE.sub(lambda m: f"{m[1]}{m[2]}…" if m[1] else f"{m[3]}***", line)


class RedactingFilter(logging.Filter):
    """On aiohttp's access logger, whatever runs the app (serve's runner, a test server, another host):
    the formatted line is redacted before any handler sees it. Installed once by the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        line = record.getMessage()
        redacted = redact_line(line)
        if redacted != line:
            record.msg, record.args = redacted, None
        return True

    @classmethod
    def install(cls, logger_name: str = "aiohttp.access") -> None:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


class HeaderDeadline:
    """Closes connections that go ``timeout`` seconds without a request in progress: a new connection that has
    not sent a complete request head by then, or a kept-alive one that has not started its next request (issue
    17: a client dribbling header bytes held its connection forever; aiohttp has no header timeout).

    The middleware counts each connection's requests in progress (a request reaches it once its head is
    complete); a sweep over the server's connections every ``interval`` s closes those idle for longer than
    ``timeout``. Slow bodies are the upload read timeout's. Public aiohttp API only: ``request.protocol``,
    ``Server.connections``, ``RequestHandler.force_close``."""

    def __init__(self, timeout: float, *, interval: float = 0.5) -> None:
        self.timeout = timeout
        self.interval = interval
        self.closed = 0  # connections closed for want of a request head
        self._busy: dict[int, tuple[object, int]] = {}  # id -> (connection, requests in progress)
        self._idle: dict[int, tuple[object, float]] = {}  # id -> (connection, idle since)

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        protocol = request.protocol
        key = id(protocol)
        self._busy[key] = (protocol, self._busy.get(key, (protocol, 0))[1] + 1)
        self._idle.pop(key, None)
        try:
            return await handler(request)
        finally:
            count = self._busy.get(key, (protocol, 1))[1] - 1
            if count > 0:
                self._busy[key] = (protocol, count)
            else:
                self._busy.pop(key, None)
                self._idle[key] = (protocol, time.monotonic())  # waiting for the next head from now

    def watch(self, server: web.Server) -> asyncio.Task:
        """Start sweeping ``server``'s connections (cancel the task to stop)."""
        return asyncio.ensure_future(self._sweep(server))

    async def _sweep(self, server: web.Server) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            live = {id(c): c for c in server.connections}
            self._busy = {k: v for k, v in self._busy.items() if live.get(k) is v[0]}
            self._idle = {k: v for k, v in self._idle.items() if live.get(k) is v[0]}
            for key, connection in live.items():
                if key in self._busy:
                    continue
                _, since = self._idle.setdefault(key, (connection, now))
                if now - since > self.timeout:
                    connection.force_close()
                    self._idle.pop(key, None)
                    self.closed += 1
                    log.info("closed a connection with no request in progress for %g s", self.timeout)
