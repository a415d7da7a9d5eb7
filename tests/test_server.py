"""The HTTP server on loopback: health, the page, and source-face upload validation."""

from __future__ import annotations

import asyncio

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from swapwatch.config import Config, ServerConfig
from swapwatch.stream.server import SwapwatchServer


@pytest.fixture(scope="module")
def detector(yunet_onnx):
    from swapwatch.engines.yunet import YuNetDetector

    return YuNetDetector(yunet_onnx)


def with_server(detector, scenario, *, max_upload_bytes: int = 2 * 1024 * 1024):
    async def main():
        config = Config(server=ServerConfig(max_upload_bytes=max_upload_bytes))
        server = SwapwatchServer(config, detector)
        async with TestServer(server.app(), host="127.0.0.1") as ts:
            async with aiohttp.ClientSession(base_url=str(ts.make_url("/"))) as http:
                return await scenario(http, server)

    return asyncio.run(main())


def form(data: bytes, *, filename: str = "face.jpg", content_type: str = "image/jpeg", field: str = "file"):
    fd = aiohttp.FormData()
    fd.add_field(field, data, filename=filename, content_type=content_type)
    return fd


def test_health_and_page(detector):
    async def scenario(http, server):
        async with http.get("/health") as r:
            assert r.status == 200
            body = await r.json()
            assert body["status"] == "ok" and body["detector"] == "yunet"
        async with http.get("/") as r:
            assert r.status == 200 and "swapwatch" in await r.text()

    with_server(detector, scenario)


def test_upload_real_face(detector, face_photos):
    photo = face_photos[0]

    async def scenario(http, server):
        async with http.post("/sources", data=form(photo.read_bytes(), content_type="image/png"
                                                   if photo.suffix == ".png" else "image/jpeg")) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        assert len(body["id"]) >= 20 and server.sources.get(body["id"]) is not None
        assert body["faces"] == 1 and len(body["face"]["landmarks"]) == 5

    with_server(detector, scenario)


@pytest.mark.parametrize("case,status", [("text", 400), ("no_face", 422), ("too_big", 413),
                                         ("wrong_type", 415), ("wrong_field", 400), ("not_multipart", 400)])
def test_upload_rejections(detector, case, status):
    blank = cv2.imencode(".jpg", np.full((240, 320, 3), 127, np.uint8))[1].tobytes()

    async def scenario(http, server):
        kwargs = {
            "text": {"data": form(b"hello, not an image")},
            "no_face": {"data": form(blank)},
            "too_big": {"data": form(b"\xff" * (300 * 1024))},
            "wrong_type": {"data": form(blank, content_type="application/pdf")},
            "wrong_field": {"data": form(blank, field="photo")},
            "not_multipart": {"json": {"file": "x"}},
        }[case]
        async with http.post("/sources", **kwargs) as r:
            assert r.status == status, await r.text()
            assert "error" in await r.json()
        assert len(server.sources) == 0
        async with http.get("/health") as r:  # the server carries on
            assert r.status == 200

    with_server(detector, scenario, max_upload_bytes=256 * 1024)
