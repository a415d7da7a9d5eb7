"""Access checks: the bearer token (PROTOCOL.md) and the Origin allow-list.

The token is compared in constant time. Browsers cannot set headers on a websocket, so ``/ws/...`` also
takes ``?token=``. The pages themselves (``GET /`` and ``GET /detect``) are public static content: the
browser must be able to load them before it knows any token. The Origin check protects against cross-site
websocket hijacking and cross-site offers and uploads: a browser always sends Origin there, so a request
without one comes from a non-browser client, which the token (when set) guards.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

PUBLIC_PATHS = frozenset({"/"})
PUBLIC_PAGES = frozenset({"/detect"})  # public for GET only (the page); POST /detect is an upload


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
        if not self.allowed_origins:
            return True
        origin = request.headers.get("Origin")
        return origin is None or origin.rstrip("/") in self.allowed_origins

    def middleware(self) -> Callable:
        """aiohttp middleware: 401 without the token on every path but the page."""

        @web.middleware
        async def check_token(request: web.Request,
                              handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            page = request.method in ("GET", "HEAD") and request.path in PUBLIC_PAGES
            if request.path not in PUBLIC_PATHS and not page:
                websocket = request.path.startswith("/ws/")
                if not self.token_ok(request, allow_query=websocket):
                    return web.json_response({"error": "missing or wrong token (Authorization: Bearer TOKEN)"},
                                             status=401, headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return check_token
