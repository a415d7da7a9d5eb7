"""The model runtime: what every model runs on and where its files come from.

- ``engine``: the :class:`Engine` interface and backend choice; ``ort_backend``, ``torch_backend``,
  ``trt_backend``: ONNX Runtime, PyTorch and TensorRT behind it.
- ``registry``: what each model file is (source, sha256, licence, contract); ``fetch``: verified fetching
  (shipped files, mirrors, HTTPS, wheels). Shipped weights live in ``engines/weights/`` (package data).
- ``media``: reading and writing images and videos (PyAV, OpenCV).

Knows nothing of faces, swapping or deepfakes (tests/test_architecture.py).
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "Array": "engine", "BACKENDS": "engine", "Engine": "engine", "TensorSpec": "engine",
    "available_backends": "engine", "choose_backend": "engine", "fixed_batch": "engine",
    "load_onnx_engine": "engine", "run_batched": "engine",
    "fetch_file": "fetch",
    "IMAGE_SUFFIXES": "media", "VIDEO_OUTPUT_SUFFIXES": "media", "VideoFrame": "media", "check_file": "media",
    "decode_image": "media", "decode_video_stream": "media", "h264_encoder": "media", "h264_options": "media",
    "is_image_file": "media", "iter_video": "media", "probe_video": "media", "read_image": "media",
    "transcode_video": "media",
    "OnnxRuntimeEngine": "ort_backend",
    "LocalSource": "registry", "ModelEntry": "registry", "ModelFile": "registry", "PackagedSource": "registry",
    "PyPIWheelSource": "registry", "REGISTRY": "registry", "SHIPPED_WEIGHTS": "registry", "UrlSource": "registry",
    "ensure_model": "registry", "get_entry": "registry", "install_file": "registry", "is_present": "registry",
    "model_dir": "registry", "models_home": "registry", "sha256_file": "registry", "verify": "registry",
    "TorchEngine": "torch_backend",
    "TensorRTEngine": "trt_backend", "engine_cache_dir": "trt_backend",
})
