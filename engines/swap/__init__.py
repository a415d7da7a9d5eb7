"""Swapping faces: the swappers, the identities they inject, and putting the face back into the frame.

- ``swapper``: the :class:`Swapper` interface; ``classic``, ``simswap``, ``inswapper``: the swappers;
  ``swappers.create_swapper`` picks one by name; ``identity``: ArcFace embeddings.
- ``selection``: which faces get which source; ``source_quality``: judging a source photo before use.
- ``parsing``, ``blend``: masks, colour match and paste-back; ``labelling``: the SYNTHETIC badge and the
  invisible watermark.
- ``pipeline``: a frame's path on the CPU (detect, track, align, swap, paste, label); ``device_path``: the same
  for a batch of frames with the frame kept on the device (batching, scheduling, uploads and downloads), with
  ``device_ops`` (its tensor kernels: Lab colour match, warp grids, badge and watermark) and
  ``device_generator`` (the generator on the device, CUDA graphs, the fp16 check).

Uses ``runtime`` and ``faces``; knows nothing of deepfake detection or the benchmark.
"""

from swapwatch.engines import lazy_exports

# Public name -> the module that defines it; imported on first use (importing a room costs nothing).
__getattr__, __dir__ = lazy_exports(__name__, {
    "FeatherMask": "blend", "colour_support": "blend", "face_outline": "blend", "from_lab": "blend",
    "lab_stats": "blend", "match_colour": "blend", "paste_back": "blend", "paste_roi": "blend",
    "poisson_paste": "blend", "to_lab": "blend",
    "ClassicSwapper": "classic",
    "fp16_check": "device_generator",
    "bgr_to_lab_torch": "device_ops", "lab_to_bgr_torch": "device_ops", "match_colour_torch": "device_ops",
    "DEVICE_PATH_MODES": "device_path", "DEVICE_PATH_STAGES": "device_path", "DeviceFramePath": "device_path",
    "DevicePathConfig": "device_path", "FaceJob": "device_path", "FrameJob": "device_path",
    "create_device_path": "device_path", "resolve_device_path": "device_path",
    "ArcFaceEmbedder": "identity", "normed": "identity",
    "InswapperSwapper": "inswapper", "read_emap": "inswapper",
    "LabelConfig": "labelling", "LabellingConfig": "labelling", "SyntheticLabeller": "labelling",
    "VisibleLabel": "labelling", "WatermarkConfig": "labelling", "WatermarkResult": "labelling",
    "Watermarker": "labelling",
    "webrtc_codec_roundtrip": "labelling",
    "FACE_CLASSES": "parsing", "FaceParser": "parsing", "LABELS": "parsing", "LABEL_IDS": "parsing",
    "MOUTH_CLASSES": "parsing", "face_mask": "parsing",
    "SwapOptions": "pipeline", "SwapPipeline": "pipeline", "SwapPlan": "pipeline",
    "DEFAULT_SOURCE": "selection", "DEFAULT_THRESHOLD": "selection", "FaceSelection": "selection",
    "SimSwapSwapper": "simswap", "arcface_input": "simswap", "nearest_indices": "simswap",
    "BLURRY_POOR": "source_quality", "SECOND_FACE_COMPARABLE": "source_quality",
    "SMALL_FACE_POOR_PX": "source_quality", "YAW_POOR_DEG": "source_quality", "head_pose": "source_quality",
    "judge_source": "source_quality",
    "SourceIdentity": "swapper", "Swapper": "swapper",
    "create_swapper": "swappers", "installed": "swappers", "resolve_name": "swappers",
})
