"""The swapwatch HTTP/WebRTC server (aiohttp + aiortc), as PROTOCOL.md specifies it.

    GET /                  the page (public)
    GET /health            status, models, sessions
    GET /metrics           Prometheus text
    POST /sources          a source-face photo -> id (kept in memory only)
    POST /offer            SDP offer + mode/source/faces -> SDP answer + session id (one Session each)
    DELETE /sessions/{id}  close a session
    GET /ws/{id}           the session's websocket: hello, metrics, alerts, heartbeats, control
    GET /detect            the offline detection page (public)
    POST /detect           a video upload -> REAL/UNCERTAIN/FAKE/NO_FACES report (as `swapwatch detect --json`)

Signaling is stateless apart from the session registry; every model runs on the one inference worker
thread; the event loop only moves frames and messages. Offline detection (POST /detect) is the exception:
an uploaded video is analysed on a thread of its own, with its own copies of the models, so that it never
holds up live sessions (at most ``max_detect_jobs`` at once).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer

from swapwatch import __version__
from swapwatch.config import Config
from swapwatch.engines.deepfake import DeepfakeDetector
from swapwatch.engines.faces import FaceDetector
from swapwatch.engines.runtime import decode_image
from swapwatch.engines.swap import Swapper, judge_source
from swapwatch.errors import InputError, InputTooLarge, ModelError
from swapwatch.stream.channel import SessionChannel
from swapwatch.stream.metrics import (PROMETHEUS_CONTENT_TYPE, PrometheusText, ServerStats, SessionStats,
                                      render_prometheus)
from swapwatch.stream.offer import OfferError, OfferRequest, SessionSettings
from swapwatch.stream.processing import FrameProcessor, default_monitor_factory
from swapwatch.stream.recorder import Recorder
from swapwatch.stream.security import AccessPolicy, HeaderDeadline, RedactingFilter
from swapwatch.stream.session import Session
from swapwatch.stream.sources import SourceFace, SourceQuotaExceeded, SourceStore
from swapwatch.stream.worker import InferenceWorker

__all__ = ["PendingOffers", "Refusal", "SourceFace", "SourceStore", "SwapwatchServer"]

log = logging.getLogger(__name__)

ALLOWED_UPLOAD_TYPES = {"image/jpeg", "image/png", "image/webp", "image/bmp"}


class SwapwatchServer:
    def __init__(self, config: Config, detector: FaceDetector, swapper: Swapper | None = None, *,
                 monitor_factory: Callable[[], Any | None] | None = None,
                 deepfake: DeepfakeDetector | None = None) -> None:
        """``swapper`` None: built from ``config.server.model`` when the app starts (on the worker).
        ``deepfake``: the loaded deepfake detector; each monitoring session gets a fork of it (shared models,
        its own track windows). ``monitor_factory`` overrides how a session's monitor is made."""
        self.config = config
        self.detector = detector
        self.swapper = swapper
        self.deepfake = deepfake
        self.monitor_factory = monitor_factory or self._new_monitor
        sc = config.server
        self.sources = SourceStore(sc.max_sources, sc.max_sources_per_client, in_use=self._sources_in_use)
        self.stats = ServerStats()
        self.access = AccessPolicy(sc.token, sc.allowed_origins)
        self.header_deadline = HeaderDeadline(sc.header_timeout)  # watched by whoever runs the app (serve)
        RedactingFilter.install()  # no session id or token in the access log, whoever runs the app
        self.worker = InferenceWorker(self.stats, batch_window=sc.batch_window, max_batch_faces=sc.max_batch_faces,
                                      queue_size=max(16, 4 * sc.max_sessions), device_path=sc.device_path)
        self.sessions: dict[str, Session] = {}  # every live session, pending or connected
        # Issue 17: a slot counts only connected sessions; offers still connecting have a budget of their own.
        self.pending = PendingOffers(per_client=sc.max_pending_per_client, total=sc.pending_limit)
        self._pending_client: dict[str, str] = {}  # pending session id -> client address
        self._connected: set[str] = set()  # session ids holding a slot
        self.started = time.time()
        self._detecting = 0  # offline analyses running (POST /detect)
        self._offline: tuple | None = None  # (deepfake detector, face detector, model) for /detect, made lazily
        self._offline_lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.server.max_upload_bytes + 64 * 1024,
                              middlewares=[self.header_deadline.middleware, self.access.middleware(self._refused)])
        app.router.add_get("/", self.index)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/sources", self.upload_source)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/detect", self.detect_page)
        app.router.add_post("/detect", self.detect)
        app.router.add_delete("/sessions/{session}", self.delete_session)
        app.router.add_post("/sessions/{session}/ticket", self.websocket_ticket)
        app.router.add_get("/ws/{session}", self.websocket)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._cleanup)
        return app

    def _refused(self, request: web.Request, reason: str) -> None:
        """The access middleware refused a request (auth, origin): offers count in the rejection stats."""
        if request.path == "/offer":
            self.stats.reject(reason)

    # ---- lifecycle ------------------------------------------------------------------------------------

    async def _startup(self, app: web.Application) -> None:
        self.worker.start()
        if self.swapper is None:
            from swapwatch.engines.swap import create_swapper

            name = self.config.server.model
            self.swapper = (await self.worker.run(create_swapper, name)).swapper
            log.info("swap model: %s%s", self.swapper.name, "" if self.swapper.learned else " (weight-free)")
        # The detector's first run allocates; pay for it now rather than on a user's first frames.
        await self.worker.run(self.detector.detect, np.zeros((240, 320, 3), np.uint8))

    async def _shutdown(self, app: web.Application) -> None:
        log.info("stopping: closing %d live session(s)", len(self.sessions))
        await asyncio.gather(*(s.close("server shutdown") for s in list(self.sessions.values())),
                             return_exceptions=True)

    async def _cleanup(self, app: web.Application) -> None:
        await asyncio.to_thread(self.worker.stop)

    def rtc_configuration(self) -> RTCConfiguration:
        sc = self.config.server
        servers = []
        for url in sc.ice_servers:
            turn = url.startswith(("turn:", "turns:"))
            servers.append(RTCIceServer(urls=url, username=sc.ice_username if turn else None,
                                        credential=sc.ice_credential if turn else None))
        return RTCConfiguration(iceServers=servers)  # empty: host candidates only (no default STUN)

    # ---- plain endpoints ------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.Response:
        page = resources.files("swapwatch.client").joinpath("static/index.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(await self.health_json())

    async def health_json(self) -> dict[str, Any]:
        sc = self.config.server
        return {
            "status": "ok", "version": __version__, "detector": self.detector.name,
            "swapper": self.swapper.name if self.swapper is not None else None,
            "swapper_learned": bool(self.swapper is not None and self.swapper.learned),
            "sessions": len(self.sessions), "max_sessions": sc.max_sessions,
            "connected": len(self._connected), "pending": self.pending.total_pending,
            "uptime_s": round(time.time() - self.started, 1), "sources": len(self.sources),
            "ice_servers": list(sc.ice_servers), "auth": sc.token is not None,
            "max_detect_bytes": sc.max_detect_bytes,
            "recording": sc.record_dir is not None,
            # The model's folder name only: /health is public and says nothing of the server's filesystem.
            "deepfake_model": Path(self.config.deepfake.model).name if self.deepfake is not None else None}

    async def metrics(self, request: web.Request) -> web.Response:
        text = await self.metrics_text()
        return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def metrics_text(self) -> str:
        text = render_prometheus(self.stats, sessions=len(self.sessions), max_sessions=self.config.server.max_sessions,
                                 queue_depth=self.worker.queue_depth, uptime=time.time() - self.started)
        extra = PrometheusText()  # the admission gauges, after the shared families
        extra.gauge("swapwatch_sessions_pending", "Sessions whose peer connection has not connected yet.",
                    self.pending.total_pending)
        extra.gauge("swapwatch_sessions_connected", "Sessions holding a slot (peer connection connected).",
                    len(self._connected))
        return text + extra.render()

    async def upload_source(self, request: web.Request) -> web.Response:
        limit = self.config.server.max_upload_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return _error(413, f"upload larger than {limit} bytes")
        part = await self._file_part(request, "expected multipart/form-data with a field named 'file'")
        if isinstance(part, web.Response):
            return part
        ctype = part.headers.get("Content-Type", "")
        if ctype and ctype not in ALLOWED_UPLOAD_TYPES:
            return _error(415, f"unsupported type {ctype}; send a JPEG, PNG, WebP or BMP image")
        data = bytearray()
        try:
            async for chunk in _chunks(part.read_chunk, self.config.server.upload_read_timeout):
                data.extend(chunk)
                if len(data) > limit:
                    return _error(413, f"upload larger than {limit} bytes")
        except UploadFailed as exc:
            return _upload_failed(request, exc)
        sc = self.config.server
        try:
            image = await asyncio.to_thread(decode_image, bytes(data), name=part.filename or "upload",
                                            max_pixels=sc.max_image_pixels, max_side=sc.max_source_side)
        except InputTooLarge as exc:  # checked from the header, before a pixel is decoded
            return _error(413, str(exc))
        except InputError as exc:
            return _error(400, str(exc))
        faces = await self.worker.run(self.detector.detect, image)  # the models' one thread
        if not faces:
            return _error(422, "no face found in the photo; use a clear, frontal face")
        face = max(faces, key=lambda f: f.area)
        try:
            item = self.sources.add(image, face, owner=request.remote or "unknown")
        except SourceQuotaExceeded as exc:
            log.warning("source upload from %s refused: %s", request.remote, exc)
            return web.json_response({"error": str(exc)}, status=exc.status,
                                     headers={"Retry-After": "10"} if exc.status == 503 else None)
        log.info("source %s…: %dx%d, %d face(s)", item.id[:6], image.shape[1], image.shape[0], len(faces))
        # Accepted all the same (the user may know better); the page shows why the swap may suffer.
        quality = await asyncio.to_thread(judge_source, image, faces)
        if not quality.ok:
            log.info("source %s… judged poor: %s", item.id[:6], "; ".join(p.code for p in quality.poor))
        return web.json_response({"id": item.id, "faces": len(faces), "face": face.to_json(),
                                  "size": [int(image.shape[1]), int(image.shape[0])], "quality": quality.to_json()})

    # ---- offline detection ----------------------------------------------------------------------------

    async def detect_page(self, request: web.Request) -> web.Response:
        page = resources.files("swapwatch.client").joinpath("static/detect.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def detect(self, request: web.Request) -> web.Response:
        """A video (multipart field ``file``, or the raw body with ``?name=``) -> the JSON of ``swapwatch detect
        --json``. Query: ``max_frames``, ``detect_every``. The upload lives in a temporary file only for the
        request and is deleted afterwards, whatever happens."""
        sc = self.config.server
        limit = sc.max_detect_bytes
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return _error(413, f"upload larger than {limit} bytes")
        try:
            options = _detect_options(request.query, sc.detect_max_frames)
        except ValueError as exc:
            return _error(400, str(exc))
        held: list[Path] = []
        handed_over = False
        try:
            # The upload arrives before an analysis slot is taken, each read under a timeout: a client that sends
            # a few bytes and waits holds only its own connection, never the slot (issue 17).
            got = await self._receive_video(request, limit, held)
            if isinstance(got, web.Response):
                return got
            path, name = got
            if self._detecting >= sc.max_detect_jobs:
                return web.json_response({"error": f"busy: {self._detecting} video analysis(es) running; try "
                                                   "again later"}, status=503, headers={"Retry-After": "10"})
            self._detecting += 1
            # The thread cannot be cancelled: it releases the slot and deletes the file when it ends.
            job = asyncio.ensure_future(asyncio.to_thread(self._analyse_upload, path, name, options))
            job.add_done_callback(lambda fut: self._detect_done(fut, path))
            handed_over = True
            try:
                report = await asyncio.shield(job)
            except InputTooLarge as exc:
                return _error(413, str(exc))
            except InputError as exc:
                return _error(400, str(exc).replace(str(path), name))
            except ModelError as exc:
                return _error(500, f"deepfake detector unavailable: {exc}")
            except Exception as exc:  # reported to the client, logged with its traceback
                log.exception("analysis of upload %r failed", name)
                return _error(500, f"analysis failed ({exc.__class__.__name__})")
            return web.json_response(report)
        finally:
            if not handed_over and held:
                _delete(held[0])

    async def _receive_video(self, request: web.Request, limit: int, held: list[Path]):
        """Stream the upload into a new temporary file (its path appended to ``held`` at once): (path, name),
        or an error response."""
        if request.content_type.startswith("multipart/"):
            part = await self._file_part(request, "malformed multipart/form-data upload")
            if isinstance(part, web.Response):
                return part
            name, read = part.filename or "upload", part.read_chunk
        else:
            name, read = request.query.get("name") or "upload", request.content.read
        name = _safe_name(name)
        suffix = Path(name).suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix="swapwatch-detect-", suffix=suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix)
                                   else "", dir=self.config.server.detect_tmp_dir)
        held.append(Path(tmp))
        size = 0
        with os.fdopen(fd, "wb") as fh:
            try:
                async for chunk in _chunks(read, self.config.server.upload_read_timeout):
                    size += len(chunk)
                    if size > limit:
                        return _error(413, f"upload larger than {limit} bytes")
                    fh.write(chunk)
            except UploadFailed as exc:
                return _upload_failed(request, exc)
        if size == 0:
            return _error(400, f"{name}: the upload is empty")
        return Path(tmp), name

    async def _file_part(self, request: web.Request, malformed: str):
        """The multipart upload's ``file`` part, or an error response. Parts before it are read here, under a
        small size limit (``max_form_field_bytes``) and the read timeout: a 300 MB text field is refused at its
        limit, not read whole (aiohttp's reader would drain it to reach the next part)."""
        sc = self.config.server
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    return _error(400, "missing multipart field 'file'")
                if part.name == "file":
                    return part
                size = 0
                async for chunk in _chunks(part.read_chunk, sc.upload_read_timeout):
                    size += len(chunk)
                    if size > sc.max_form_field_bytes:
                        return _error(413, f"multipart field {_safe_name(part.name or '?')!r} larger than "
                                           f"{sc.max_form_field_bytes} bytes (only 'file' may be large)")
        except UploadFailed as exc:
            return _upload_failed(request, exc)
        except ConnectionError:  # lost while reading a part's head
            return _upload_failed(request, UploadAborted())
        except (AssertionError, ValueError, KeyError):
            return _error(400, malformed)

    def _analyse_upload(self, path: Path, name: str, options: dict) -> dict:
        """On an analysis thread: probe (a non-video fails before any model runs), then detect."""
        from swapwatch.engines.deepfake import detect_video
        from swapwatch.engines.runtime import is_image_file, probe_video

        if is_image_file(path):
            raise InputError(f"{name}: is a still image, not a video")
        info = probe_video(path)
        limit = self.config.server.max_detect_pixels
        if info.width * info.height > limit:  # from the header, before a frame is decoded
            raise InputTooLarge(f"{name}: the video is {info.width}x{info.height}, above the server's {limit} pixels "
                                "per frame; scale it down (e.g. to 1920x1080) and upload it again")
        deepfake, faces, model = self._offline_models()
        report = detect_video(path, detector=deepfake, face_detector=faces, model_path=model, name=name, **options)
        doc = report.to_json()
        if doc["model"].get("path"):  # the model's folder name, not where it lives on the server
            doc["model"]["path"] = Path(doc["model"]["path"]).name
        log.info("detect %s: %s (score %s), %d frames, %d track(s) in %.1f s", name, report.verdict,
                 doc["score"], report.video["frames"], len(report.tracks), report.timings["analysis_s"])
        return doc

    def _offline_models(self) -> tuple:
        """The deepfake detector (``config.deepfake.model``, the default one when live detection is off) and a
        face detector of the live one's kind, loaded on first use: copies of their own, because an engine
        (a TensorRT context above all) must not run on two threads at once, and the live ones belong to
        the inference worker."""
        with self._offline_lock:
            if self._offline is None:
                from dataclasses import replace

                from swapwatch.engines.faces import create_detector

                dc = self.config.deepfake
                model = dc.model or "default"
                deepfake = DeepfakeDetector.load(model, backend=dc.backend, device=dc.device)
                faces = create_detector(replace(self.config.detector, name=self.detector.name))
                self._offline = (deepfake, faces, model)
            return self._offline

    def _detect_done(self, job: asyncio.Future, path: Path) -> None:
        self._detecting -= 1
        _delete(path)
        if not job.cancelled():
            job.exception()  # retrieved here too, in case the handler is gone

    # ---- sessions -------------------------------------------------------------------------------------

    async def offer(self, request: web.Request) -> web.Response:
        sc = self.config.server
        if request.content_length is not None and request.content_length > sc.max_offer_bytes:
            self.stats.reject("bad_offer")
            return _error(400, f"offer larger than {sc.max_offer_bytes} bytes")
        try:
            offer = OfferRequest.parse(await request.read(), max_bytes=sc.max_offer_bytes)
        except OfferError as exc:
            self.stats.reject("bad_offer")
            return _error(400, str(exc))
        settings = offer.settings
        source = self.sources.get(settings.source) if settings.source else None
        if settings.source and source is None:
            self.stats.reject("unknown_source")
            return _error(404, f"unknown source {settings.source!r}; upload a face with POST /sources")
        try:
            answer = await self.start_session(offer, request.remote or "unknown", source)
        except Refusal as refusal:
            return refusal.response()
        return web.json_response(answer)

    async def start_session(self, offer: OfferRequest, client: str, source: SourceFace | None) -> dict[str, Any]:
        """A validated offer (its source resolved) from ``client`` -> the answer ``{"sdp", "type", "session"}``,
        or :class:`Refusal`. The part of ``POST /offer`` after parsing: a cluster's session host runs it too."""
        sc = self.config.server
        settings = offer.settings
        if offer.record and sc.record_dir is None:
            self.stats.reject("bad_offer")
            raise Refusal(400, "recording is not enabled on this server (start it with --record-dir)")
        if offer.record and _free_bytes(sc.record_dir) < sc.record_min_free_bytes:
            self.stats.reject("disk")
            log.warning("offer to record refused: less than %d bytes free in the record folder",
                        sc.record_min_free_bytes)
            raise Refusal(503, "recording is not possible right now (the server's recording disk is full); "
                               "try without recording", reason="disk", headers={"Retry-After": "60"})
        self._admission(client)
        self.pending.take(client)  # before the first await: concurrent offers see it
        try:
            session = await self._create_session(settings, source, record=offer.record)
        except OfferError as exc:
            self.pending.release(client)
            self.stats.reject("bad_offer")
            raise Refusal(400, str(exc)) from None
        except BaseException:
            self.pending.release(client)
            raise
        self.sessions[session.id] = session
        self._pending_client[session.id] = client
        self.session_started(session)
        try:
            answer = await session.accept(offer.sdp)
        except Exception as exc:  # the offer passed validation but aiortc cannot negotiate it
            log.warning("offer refused during negotiation: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            await session.close("negotiation failed")
            self.stats.reject("bad_offer")
            raise Refusal(400, f"cannot negotiate this offer: {exc}") from None
        except BaseException:  # cancelled (the client went away): no session outlives an offer left unanswered
            asyncio.ensure_future(session.close("negotiation cancelled"))
            raise
        self.stats.sessions_created += 1
        log.info("session %s…: %s, faces %s%s (%d live, %d pending)", session.id[:6], settings.mode, settings.faces,
                 ", recording" if session.recorder else "", len(self.sessions), self.pending.total_pending)
        return {"sdp": answer.sdp, "type": answer.type, "session": session.id}

    def session_started(self, session: Session) -> None:
        """A session was created (before its answer): a hook for whoever relays its messages elsewhere."""

    def _admission(self, client: str) -> None:
        """:class:`Refusal` (503, logged, counted) for an offer over a budget: checked before anything is built. The
        client's pending budget, then everyone's, then the slots: connected sessions plus this client's pending
        offers (another client's half-open offers never hold a slot)."""
        sc = self.config.server
        mine = self.pending.of(client)
        reason = self.pending.refusal(client)
        if reason is None and len(self._connected) + mine >= sc.max_sessions:
            reason = "full"
        if reason is None:
            return
        message = {
            "pending_client": f"too many offers still connecting from your address ({mine}, at most "
                              f"{self.pending.per_client}); try again when they have connected or expired",
            "pending": f"too many offers still connecting ({self.pending.total_pending}); try again shortly",
            "full": f"server full ({sc.max_sessions} sessions); try again later",
        }[reason]
        # Pending offers expire within pending_timeout; a full server frees a slot when a session ends.
        retry_after = "5" if reason == "full" else str(math.ceil(sc.pending_timeout))
        self.stats.reject(reason)
        log.warning("offer from %s refused (%s): %d connected, %d pending (%d from this client)", client, reason,
                    len(self._connected), self.pending.total_pending, mine)
        raise Refusal(503, message, reason=reason, headers={"Retry-After": retry_after})

    def _on_connected(self, session: Session) -> bool:
        """A pending session's peer connection connected: it leaves the pending budget and takes a slot if one
        is free (False: every slot is taken, the session closes with "server full")."""
        self._leave_pending(session)
        if len(self._connected) >= self.config.server.max_sessions:
            self.stats.reject("full")
            log.warning("session %s… connected but the server is full (%d sessions): closing it", session.id[:6],
                        len(self._connected))
            return False
        self._connected.add(session.id)
        return True

    def _leave_pending(self, session: Session) -> None:
        client = self._pending_client.pop(session.id, None)
        if client is not None:
            self.pending.release(client)

    async def _create_session(self, settings: SessionSettings, source: SourceFace | None, *,
                              record: bool) -> Session:
        try:
            processor = await self.worker.run(self._new_processor, settings, source)
        except (ValueError, InputError) as exc:
            raise OfferError(f"cannot use this source: {exc}") from None
        session_id = secrets.token_urlsafe(16)
        recorder = None
        if record:
            name = f"{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(4)}.mp4"
            sc = self.config.server
            recorder = Recorder(Path(sc.record_dir) / name, max_seconds=sc.record_max_seconds,
                                max_bytes=sc.record_max_bytes, min_free_bytes=sc.record_min_free_bytes)
        return Session(session_id, settings, source, processor=processor, worker=self.worker,
                       config=self.config.server, stats=SessionStats(self.stats),
                       rtc_config=self.rtc_configuration(), recorder=recorder, on_closed=self._closed,
                       on_connected=self._on_connected)

    def _sources_in_use(self) -> set[str]:
        return {s.settings.source for s in self.sessions.values() if s.settings.source}

    def _new_monitor(self) -> Any | None:
        if self.deepfake is None:
            return default_monitor_factory()
        from swapwatch.engines.deepfake import FrameMonitor

        return FrameMonitor(detector=self.deepfake.fork())

    def _new_processor(self, settings: SessionSettings, source: SourceFace | None) -> FrameProcessor:
        return FrameProcessor(self.detector, self.swapper, settings, source, tracking=self.config.tracking,
                              monitor_factory=self.monitor_factory,
                              max_frame_pixels=self.config.server.max_frame_pixels)

    def _closed(self, session: Session) -> None:
        self._leave_pending(session)
        self._connected.discard(session.id)
        if self.sessions.pop(session.id, None) is not None:
            self.stats.closed((session.close_reason or "closed").split(":")[0])

    async def delete_session(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            return _error(404, "no such session")
        await session.close("deleted by client")
        return web.json_response({"closed": session.id})

    async def websocket_ticket(self, request: web.Request) -> web.Response:
        """A single-use websocket ticket for the session (the request itself needs the token, if any)."""
        session_id = request.match_info["session"]
        if session_id not in self.sessions:
            return _error(404, "no such session")
        from swapwatch.stream.security import TICKET_SECONDS

        return web.json_response({"ticket": self.access.issue_ticket(session_id), "expires_in": TICKET_SECONDS})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["session"])
        if session is None:
            return _error(404, "no such session")
        ws = web.WebSocketResponse(max_msg_size=self.config.server.max_message_bytes)
        await ws.prepare(request)
        await SessionChannel(session, ws, config=self.config.server, sources=self.sources).run()
        return ws


class PendingOffers:
    """The budget of offers whose peer connection has not connected yet: at most ``per_client`` per client
    address and ``total`` in all. The server checks :meth:`refusal` (or the counts) before it builds anything,
    :meth:`take` s one per accepted offer and :meth:`release` s it when the session connects or closes."""

    def __init__(self, *, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self._by_client: Counter[str] = Counter()

    @property
    def total_pending(self) -> int:
        return sum(self._by_client.values())

    def of(self, client: str) -> int:
        return self._by_client[client]

    def refusal(self, client: str) -> str | None:
        """Why one more offer from ``client`` is over budget ("pending_client", "pending"), or None."""
        if self._by_client[client] >= self.per_client:
            return "pending_client"
        if self.total_pending >= self.total:
            return "pending"
        return None

    def take(self, client: str) -> None:
        self._by_client[client] += 1

    def release(self, client: str) -> None:
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:  # no empty entries: the map holds only clients with offers connecting
            del self._by_client[client]


class Refusal(Exception):
    """An offer refused with an HTTP status and a one-line reason (``reason``: the machine-readable cause of a
    503, as PROTOCOL.md lists them; ``headers``: Retry-After). Plain data, so a session host can return it."""

    def __init__(self, status: int, error: str, *, reason: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.reason, self.headers = status, error, reason, dict(headers or {})

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.error, "reason": self.reason, "headers": self.headers}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refusal:
        return cls(int(data["status"]), str(data["error"]), reason=data.get("reason"), headers=data.get("headers"))

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error}
        if self.reason is not None:
            body["reason"] = self.reason
        return web.json_response(body, status=self.status, headers=self.headers or None)


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class UploadFailed(Exception):
    """An upload that did not arrive: answered with ``status`` and logged as one line, never a traceback."""

    status = 400


class UploadStalled(UploadFailed):
    """No byte of an upload arrived for the read timeout."""

    status = 408


class UploadAborted(UploadFailed):
    """The client closed the connection in the middle of its upload."""

    def __init__(self, message: str = "upload aborted: the client closed the connection") -> None:
        super().__init__(message)


def _upload_failed(request: web.Request, exc: UploadFailed) -> web.Response:
    log.info("%s %s from %s: %s", request.method, request.path, request.remote, exc)
    return _error(exc.status, str(exc))


async def _chunks(read: Callable[[int], Awaitable[bytes]], timeout: float,
                  size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """An upload's chunks, each read within ``timeout`` seconds (:class:`UploadStalled` otherwise)."""
    while True:
        try:
            chunk = await asyncio.wait_for(read(size), timeout)
        except asyncio.TimeoutError:
            raise UploadStalled(f"upload stalled: no data for {timeout:g} s") from None
        except ConnectionError:  # aiohttp's "Connection lost": the client went away mid-upload
            raise UploadAborted() from None
        if not chunk:
            return
        yield chunk


def _free_bytes(folder: str) -> int:
    path = Path(folder)
    while not path.exists() and path != path.parent:  # the folder is made on the first recording
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _delete(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _safe_name(name: str) -> str:
    """An uploaded file's base name, for messages and the report (never used as a path)."""
    base = re.split(r"[\\/]", name)[-1]
    return "".join(c for c in base if c.isprintable())[:120] or "upload"


def _detect_options(query, cap: int | None) -> dict:
    """``max_frames`` and ``detect_every`` from the query (ValueError with a reason), the server's cap applied."""
    out: dict = {}
    for key, low, high in (("max_frames", 1, None), ("detect_every", 1, 30)):
        if key in query:
            try:
                value = int(query[key])
            except ValueError:
                raise ValueError(f"{key} must be an integer") from None
            if value < low or (high is not None and value > high):
                raise ValueError(f"{key} must be between {low} and {high}" if high else f"{key} must be >= {low}")
            out[key] = value
    if cap is not None:
        out["max_frames"] = min(out.get("max_frames", cap), cap)
    return out
