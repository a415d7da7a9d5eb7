"""Access checks: the bearer token (PROTOCOL.md) and the Origin allow-list.

The token is compared in constant time. Browsers cannot set headers on a websocket, so ``/ws/...`` also
takes ``?token=``. The pages themselves (``GET /`` and ``GET /detect``) are public static content: the
browser must be able to load them before it knows any token.

The Origin check protects against cross-site websocket hijacking and cross-site offers, uploads and deletes:
every state-changing request (any method but GET, HEAD and OPTIONS) and every websocket is checked in the
middleware, so no endpoint can be left out. A browser always sends Origin there; it must be the server's own
(its host and port, as the request's Host header names them) or one of ``--allowed-origin``. A request without
Origin comes from a non-browser client, which the token (when set) guards. Behind a reverse proxy that
rewrites Host, name the public origin with ``--allowed-origin``.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

PUBLIC_PATHS = frozenset({"/"})
PUBLIC_PAGES = frozenset({"/detect"})  # public for GET only (the page); POST /detect is an upload
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # change nothing: no Origin check (websockets aside)


class AccessPolicy:
    def __init__(self, token: str | None = None, allowed_origins: tuple[str, ...] = ()) -> None:
        self.token = token
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins)

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
                if not self.token_ok(request, allow_query=websocket):
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
                         request.method, redact_path(request.path_qs), response.status, response.body_length,
                         time * 1000.0)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


_SESSION_PATH = re.compile(r"^/(ws|sessions)/([^/?]{6})[^/?]*")
_TOKEN_QUERY = re.compile(r"([?&]token=)[^&]*")


def redact_path(path_qs: str) -> str:
    """``/ws/abcdef123...?token=s3cret`` -> ``/ws/abcdef…?token=***``."""
    return _TOKEN_QUERY.sub(r"\1***", _SESSION_PATH.sub(r"/\1/\2…", path_qs))
