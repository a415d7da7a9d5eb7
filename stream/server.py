"""The swapwatch HTTP server (aiohttp): the client page, health, and source-face uploads.

Live WebRTC sessions (`POST /offer`, `/ws/{session}`) build on this app.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
from aiohttp import web

from swapwatch import __version__
from swapwatch.config import Config
from swapwatch.engines.face import Face, FaceDetector
from swapwatch.engines.media import decode_image
from swapwatch.errors import InputError

log = logging.getLogger(__name__)

ALLOWED_UPLOAD_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp"}


@dataclass
class SourceFace:
    """An uploaded source photo, held in memory only (nothing a user sends is written to disk)."""

    id: str
    image: np.ndarray
    face: Face
    created: float = field(default_factory=time.monotonic)


class SourceStore:
    """Uploaded source faces by unguessable id, bounded so uploads cannot exhaust memory."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: dict[str, SourceFace] = {}

    def add(self, image: np.ndarray, face: Face) -> SourceFace:
        while len(self._items) >= self.capacity:  # evict the oldest
            self._items.pop(next(iter(self._items)))
        item = SourceFace(secrets.token_urlsafe(16), image, face)
        self._items[item.id] = item
        return item

    def get(self, source_id: str) -> SourceFace | None:
        return self._items.get(source_id)

    def __len__(self) -> int:
        return len(self._items)


class SwapwatchServer:
    def __init__(self, config: Config, detector: FaceDetector) -> None:
        self.config = config
        self.detector = detector
        self.sources = SourceStore()
        self.started = time.time()
        # Detection runs in a worker thread so the event loop never blocks on inference.
        self._detect_lock = asyncio.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.server.max_upload_bytes + 64 * 1024)
        app.router.add_get("/", self.index)
        app.router.add_get("/health", self.health)
        app.router.add_post("/sources", self.upload_source)
        return app

    async def index(self, request: web.Request) -> web.Response:
        page = resources.files("swapwatch.client").joinpath("static/index.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__, "detector": self.detector.name,
                                  "uptime_s": round(time.time() - self.started, 1), "sources": len(self.sources)})

    async def upload_source(self, request: web.Request) -> web.Response:
        limit = self.config.server.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return _error(413, f"upload larger than {limit} bytes")
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            return _error(400, "expected multipart/form-data with a field named 'file'")
        part = await reader.next()
        while part is not None and part.name != "file":
            part = await reader.next()
        if part is None:
            return _error(400, "missing multipart field 'file'")
        ctype = part.headers.get("Content-Type", "")
        if ctype and ctype not in ALLOWED_UPLOAD_TYPES:
            return _error(415, f"unsupported type {ctype}; send a JPEG, PNG, WebP or BMP image")
        data = bytearray()
        while chunk := await part.read_chunk(64 * 1024):
            data.extend(chunk)
            if len(data) > limit:
                return _error(413, f"upload larger than {limit} bytes")
        try:
            image = decode_image(bytes(data), name=part.filename or "upload")
        except InputError as exc:
            return _error(400, str(exc))
        async with self._detect_lock:
            faces = await asyncio.to_thread(self.detector.detect, image)
        if not faces:
            return _error(422, "no face found in the photo; use a clear, frontal face")
        face = max(faces, key=lambda f: f.area)
        item = self.sources.add(image, face)
        log.info("source %s…: %dx%d, %d face(s)", item.id[:6], image.shape[1], image.shape[0], len(faces))
        return web.json_response({"id": item.id, "faces": len(faces), "face": face.to_json(),
                                  "size": [int(image.shape[1]), int(image.shape[0])]})


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
